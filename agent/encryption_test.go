package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tenantvault/tenantvault/vault"
)

func TestEncryptionConfig(t *testing.T) {
	dir := t.TempDir()
	id, sign, recipient, _, err := vault.NewKeyPair("2026-01-01T00:00:00Z")
	if err != nil {
		t.Fatal(err)
	}
	idPath, signPath := filepath.Join(dir, "restore.key"), filepath.Join(dir, "snapshot.key")
	os.WriteFile(idPath, []byte(id), 0o600)
	os.WriteFile(signPath, []byte(sign), 0o600)
	getenv := func(string) string { return "postgres://backup@db/app" }
	base := `
repository: file:///var/lib/tenantvault
sources:
  - name: main
    url_env: X
    schedule: "@hourly"
`
	cfg, err := Load([]byte(base+"encryption:\n  signing_key_file: "+signPath+"\n"), getenv)
	if err != nil {
		t.Fatal(err)
	}
	if k := cfg.Keys(); k == nil || len(k.Signing) != 1 || len(k.Identities) != 0 || k.RecipientStrings()[0] != recipient {
		t.Fatalf("keys: %+v", k)
	}
	if !strings.Contains(cfg.Summary(), "encrypted to 1 recipient(s)") {
		t.Fatalf("summary: %s", cfg.Summary())
	}
	for _, c := range []struct{ section, want string }{
		{"encryption:\n  signing_key_file: " + idPath + "\n", "holds an age identity"},
		{"encryption:\n  recipients: [" + recipient + "]\n", "signing_key_file: missing"},
		{"encryption:\n  recipients: [age1nope]\n  signing_key_file: " + signPath + "\n", "encryption.recipients[0]: malformed recipient"},
		{"encryption:\n  signing_key_file: " + filepath.Join(dir, "missing") + "\n", "no such file"},
		{"encryption:\n  signing_key: x\n", `unknown key "signing_key" in encryption`},
	} {
		_, err := Load([]byte(base+c.section), getenv)
		var p Problems
		if !errors.As(err, &p) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want a problem with %q", c.section, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "AGE-SECRET-KEY-1") {
			t.Errorf("a problem quotes a secret: %v", err)
		}
	}
}
