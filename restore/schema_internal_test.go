package restore

import "testing"

func TestSchemaStatement(t *testing.T) {
	for _, c := range []struct {
		line, name string
		ok         bool
	}{
		{"CREATE SCHEMA tenant_00001;", "tenant_00001", true},
		{`CREATE SCHEMA "Tenant ""x"" y";`, `Tenant "x" y`, true},
		{`COMMENT ON SCHEMA "a b" IS 'c';`, "a b", true},
		{"COMMENT ON SCHEMA public IS 'standard public schema';", "public", true},
		{"CREATE SCHEMA tenant_00001", "", false},
		{`CREATE SCHEMA "open;`, "", false},
		{"CREATE TABLE x (a int);", "", false},
	} {
		name, ok := schemaStatement(c.line)
		if name != c.name || ok != c.ok {
			t.Errorf("%q: %q %v, want %q %v", c.line, name, ok, c.name, c.ok)
		}
	}
}
