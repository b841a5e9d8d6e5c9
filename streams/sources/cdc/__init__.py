"""Database change streams: Debezium-shaped ``db.<schema>.<table>.<op>.v1`` events, from an
existing Debezium topic (``debezium``) or straight from PostgreSQL's logical replication
(``pgoutput`` decodes the protocol, ``postgres`` is the source)."""
