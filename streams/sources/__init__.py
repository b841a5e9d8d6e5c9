"""Sources: long-running producers that turn the outside world into versioned events
(``streams.sources.base.Source``); ``vigil source NAME`` runs one."""
