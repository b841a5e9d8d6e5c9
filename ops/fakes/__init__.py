"""Local fake Slack and GitHub API servers for tests and the demo (never imported by production code)."""
