-- kanal app store, schema version 1 (docs/apps.md, "SQL stores").
-- One portable dialect: SQLite, PostgreSQL and MySQL/MariaDB all run this file as it is.
-- app_key is not "key", a reserved word in MySQL; VARCHAR(191) keeps a utf8mb4 index within
-- MySQL's 767-byte limit. settings is the app's [[apps]] table as JSON (every setting that
-- differs from its default, secret and enabled included), read back through the loader.
CREATE TABLE kanal_apps (
    app_id VARCHAR(191) NOT NULL PRIMARY KEY,
    app_key VARCHAR(191) NOT NULL UNIQUE,
    settings TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
