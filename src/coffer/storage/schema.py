"""Versioned schema migrations, applied in order on start. Never edit a released entry: append."""

MIGRATIONS: list[str] = [
    # 1: the foundation
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE vaults (
        name TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, created INTEGER NOT NULL, updated INTEGER NOT NULL,
        retention_days INTEGER NOT NULL, purge_protection INTEGER NOT NULL, sku TEXT NOT NULL,
        rbac_authorization INTEGER NOT NULL, wrapped_key BLOB NOT NULL, key_term INTEGER NOT NULL
    );
    CREATE TABLE principals (
        object_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, client_id TEXT NOT NULL, kind TEXT NOT NULL,
        display_name TEXT NOT NULL, created INTEGER NOT NULL, UNIQUE (tenant_id, client_id)
    );
    CREATE TABLE credentials (
        id TEXT PRIMARY KEY, object_id TEXT NOT NULL REFERENCES principals(object_id), kind TEXT NOT NULL,
        secret_hash TEXT NOT NULL, created INTEGER NOT NULL, expires INTEGER
    );
    CREATE INDEX credentials_by_principal ON credentials(object_id);
    CREATE TABLE objects (
        vault TEXT NOT NULL, kind TEXT NOT NULL, name_key TEXT NOT NULL, name TEXT NOT NULL, latest TEXT,
        deleted INTEGER, purge_at INTEGER, PRIMARY KEY (vault, kind, name_key)
    );
    CREATE INDEX objects_purge ON objects(purge_at) WHERE purge_at IS NOT NULL;
    CREATE TABLE versions (
        vault TEXT NOT NULL, kind TEXT NOT NULL, name_key TEXT NOT NULL, name TEXT NOT NULL,
        version TEXT NOT NULL, created INTEGER NOT NULL, updated INTEGER NOT NULL, enabled INTEGER NOT NULL,
        nbf INTEGER, exp INTEGER, content_type TEXT, tags TEXT, managed INTEGER NOT NULL, kid TEXT,
        payload BLOB NOT NULL, seq INTEGER NOT NULL, extra TEXT,
        PRIMARY KEY (vault, kind, name_key, version)
    );
    CREATE INDEX versions_by_seq ON versions(vault, kind, name_key, seq)
    """,
    # 2: identity: tenants as rows, credential lookups (certificate thumbprints, federated subjects),
    # credential data, and trusted external issuers
    """
    CREATE TABLE tenants (id TEXT PRIMARY KEY, display_name TEXT NOT NULL, created INTEGER NOT NULL);
    INSERT INTO tenants(id, display_name, created)
        SELECT substr(key, 8), json_extract(CAST(value AS TEXT), '$.displayName'),
               json_extract(CAST(value AS TEXT), '$.created') FROM meta WHERE key LIKE 'tenant:%';
    DELETE FROM meta WHERE key LIKE 'tenant:%';
    ALTER TABLE credentials ADD COLUMN lookup TEXT;
    ALTER TABLE credentials ADD COLUMN data TEXT;
    CREATE INDEX credentials_by_lookup ON credentials(lookup) WHERE lookup IS NOT NULL;
    CREATE TABLE issuers (
        id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(id), issuer TEXT NOT NULL,
        jwks TEXT NOT NULL, audience TEXT, created INTEGER NOT NULL, UNIQUE (tenant_id, issuer)
    )
    """,
    # 3: authorization: custom role definitions, role assignments, access policies per vault
    """
    CREATE TABLE role_definitions (
        id TEXT PRIMARY KEY, scope TEXT NOT NULL, role_name TEXT NOT NULL, description TEXT NOT NULL,
        permissions TEXT NOT NULL, assignable_scopes TEXT NOT NULL, created INTEGER NOT NULL, updated INTEGER NOT NULL
    );
    CREATE TABLE role_assignments (
        id TEXT PRIMARY KEY, scope TEXT NOT NULL, role_definition_id TEXT NOT NULL, principal_id TEXT NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE INDEX role_assignments_by_scope ON role_assignments(scope);
    ALTER TABLE vaults ADD COLUMN access_policies TEXT
    """,
    # 4: per-object data (a key's rotation policy)
    """
    ALTER TABLE objects ADD COLUMN data TEXT
    """,
    # 5: the change feed that tells other processes and nodes what to reload (Storage.changes_since)
    """
    CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, at INTEGER NOT NULL)
    """,
]

# PostgreSQL (storage/postgres.py): its own numbering, recorded in the table schema_version. Entry 1 is the whole schema
# of SQLite's migrations 1-5. Text columns compare and sort bytewise (COLLATE "C"), as SQLite's do, whatever the
# database's locale; booleans are 0/1 integers and JSON is text, so `coffer operator migrate` copies rows unchanged.
POSTGRES_MIGRATIONS: list[str] = [
    # 1: the schema of SQLite's migrations 1-5
    """
    CREATE TABLE meta (key TEXT COLLATE "C" PRIMARY KEY, value BYTEA NOT NULL);
    CREATE TABLE tenants (
        id TEXT COLLATE "C" PRIMARY KEY, display_name TEXT COLLATE "C" NOT NULL, created BIGINT NOT NULL
    );
    CREATE TABLE vaults (
        name TEXT COLLATE "C" PRIMARY KEY, tenant_id TEXT COLLATE "C" NOT NULL, created BIGINT NOT NULL,
        updated BIGINT NOT NULL, retention_days BIGINT NOT NULL, purge_protection INTEGER NOT NULL,
        sku TEXT COLLATE "C" NOT NULL, rbac_authorization INTEGER NOT NULL, wrapped_key BYTEA NOT NULL,
        key_term BIGINT NOT NULL, access_policies TEXT COLLATE "C"
    );
    CREATE TABLE principals (
        object_id TEXT COLLATE "C" PRIMARY KEY, tenant_id TEXT COLLATE "C" NOT NULL,
        client_id TEXT COLLATE "C" NOT NULL, kind TEXT COLLATE "C" NOT NULL, display_name TEXT COLLATE "C" NOT NULL,
        created BIGINT NOT NULL, UNIQUE (tenant_id, client_id)
    );
    CREATE TABLE credentials (
        id TEXT COLLATE "C" PRIMARY KEY, object_id TEXT COLLATE "C" NOT NULL REFERENCES principals(object_id),
        kind TEXT COLLATE "C" NOT NULL, secret_hash TEXT COLLATE "C" NOT NULL, created BIGINT NOT NULL, expires BIGINT,
        lookup TEXT COLLATE "C", data TEXT COLLATE "C"
    );
    CREATE INDEX credentials_by_principal ON credentials(object_id);
    CREATE INDEX credentials_by_lookup ON credentials(lookup) WHERE lookup IS NOT NULL;
    CREATE TABLE issuers (
        id TEXT COLLATE "C" PRIMARY KEY, tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
        issuer TEXT COLLATE "C" NOT NULL, jwks TEXT COLLATE "C" NOT NULL, audience TEXT COLLATE "C",
        created BIGINT NOT NULL, UNIQUE (tenant_id, issuer)
    );
    CREATE TABLE role_definitions (
        id TEXT COLLATE "C" PRIMARY KEY, scope TEXT COLLATE "C" NOT NULL, role_name TEXT COLLATE "C" NOT NULL,
        description TEXT COLLATE "C" NOT NULL, permissions TEXT COLLATE "C" NOT NULL,
        assignable_scopes TEXT COLLATE "C" NOT NULL, created BIGINT NOT NULL, updated BIGINT NOT NULL
    );
    CREATE TABLE role_assignments (
        id TEXT COLLATE "C" PRIMARY KEY, scope TEXT COLLATE "C" NOT NULL, role_definition_id TEXT COLLATE "C" NOT NULL,
        principal_id TEXT COLLATE "C" NOT NULL, created BIGINT NOT NULL
    );
    CREATE INDEX role_assignments_by_scope ON role_assignments(scope);
    CREATE TABLE objects (
        vault TEXT COLLATE "C" NOT NULL, kind TEXT COLLATE "C" NOT NULL, name_key TEXT COLLATE "C" NOT NULL,
        name TEXT COLLATE "C" NOT NULL, latest TEXT COLLATE "C", deleted BIGINT, purge_at BIGINT, data TEXT COLLATE "C",
        PRIMARY KEY (vault, kind, name_key)
    );
    CREATE INDEX objects_purge ON objects(purge_at) WHERE purge_at IS NOT NULL;
    CREATE TABLE versions (
        vault TEXT COLLATE "C" NOT NULL, kind TEXT COLLATE "C" NOT NULL, name_key TEXT COLLATE "C" NOT NULL,
        name TEXT COLLATE "C" NOT NULL, version TEXT COLLATE "C" NOT NULL, created BIGINT NOT NULL,
        updated BIGINT NOT NULL, enabled INTEGER NOT NULL, nbf BIGINT, exp BIGINT, content_type TEXT COLLATE "C",
        tags TEXT COLLATE "C", managed INTEGER NOT NULL, kid TEXT COLLATE "C", payload BYTEA NOT NULL,
        seq BIGINT NOT NULL, extra TEXT COLLATE "C",
        PRIMARY KEY (vault, kind, name_key, version)
    );
    CREATE INDEX versions_by_seq ON versions(vault, kind, name_key, seq);
    CREATE TABLE changes (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, topic TEXT COLLATE "C" NOT NULL, at BIGINT NOT NULL
    )
    """,
]
