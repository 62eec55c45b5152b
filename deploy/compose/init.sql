-- A small multi-tenant demo database (column model: tenant_id), loaded by
-- the postgres container on first start.
CREATE TABLE plans (code text PRIMARY KEY, price numeric(10,2) NOT NULL);
CREATE TABLE tenants (id text PRIMARY KEY, name text NOT NULL, plan text NOT NULL REFERENCES plans(code));
CREATE TABLE users (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant_id text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
  email text NOT NULL
);
CREATE TABLE projects (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant_id text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
  name text NOT NULL,
  settings jsonb
);
-- No tenant column: scoped through projects.
CREATE TABLE tasks (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  project_id bigint NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
  title text NOT NULL,
  done boolean NOT NULL DEFAULT false
);
CREATE INDEX ON users (tenant_id);
CREATE INDEX ON projects (tenant_id);
CREATE INDEX ON tasks (project_id);

INSERT INTO plans VALUES ('free', 0), ('pro', 49.90);
INSERT INTO tenants SELECT 'tenant-' || g, 'Demo tenant ' || g, CASE WHEN g % 3 = 0 THEN 'pro' ELSE 'free' END FROM generate_series(1, 20) g;
INSERT INTO users (tenant_id, email) SELECT t.id, 'user' || g || '@' || t.id || '.example' FROM tenants t, generate_series(1, 5) g;
INSERT INTO projects (tenant_id, name, settings) SELECT t.id, 'Project ' || g, jsonb_build_object('n', g) FROM tenants t, generate_series(1, 3) g;
INSERT INTO tasks (project_id, title, done) SELECT p.id, 'Task ' || g, g % 2 = 0 FROM projects p, generate_series(1, 10) g;

-- The agent connects as a user that can only read.
CREATE ROLE tenantvault LOGIN PASSWORD 'demo-backup-password';
GRANT pg_read_all_data TO tenantvault;
