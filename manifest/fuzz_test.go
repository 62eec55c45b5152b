package manifest_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
)

func sample() *manifest.Manifest {
	id := "20261128T110145.123Z-1a2b3c4d"
	sum := strings.Repeat("ab", 32)
	at := time.Date(2026, 11, 28, 11, 1, 45, 123000000, time.UTC)
	return &manifest.Manifest{
		Version: manifest.Version, ID: id, Kind: manifest.KindScheduled, Note: "n",
		Source:    manifest.Source{Name: "main", Host: "db:5432", Database: "saas", SystemID: "7313", ServerVersion: "15.2", ServerNum: 150002},
		Tenancy:   manifest.Tenancy{Model: "column", TenantColumn: "tenant_id"},
		StartedAt: at, ConsistentAt: at, FinishedAt: at, LSN: "0/3000148",
		Schemas: []manifest.SchemaDump{{Database: "saas", Key: "schemas/" + sum + ".dump", Size: 10, SHA256: sum}},
		Tables: []manifest.Table{{Schema: "public", Name: "t", Kind: manifest.TableScoped, Key: []string{"id"},
			Columns: []manifest.Column{{Name: "id", Type: "bigint", NotNull: true}}, Scope: &manifest.Scope{Column: "tenant_id"}, Signature: sum}},
		Packs:   []string{"packs/" + id + "/000001.pack"},
		Global:  []manifest.Chunk{{Table: 0, Rows: 1, Size: 3, Digest: sum, Pack: 0, Offset: 0, Length: 9, SHA256: sum}},
		Tenants: []manifest.Tenant{{ID: "acme", Rows: 2, Chunks: []manifest.Chunk{{Table: 0, Rows: 2, Size: 5, Digest: sum, Pack: 0, Offset: 9, Length: 20, SHA256: sum}}}},
	}
}

// FuzzDecode feeds arbitrary bytes to manifest.Decode: it must never
// panic, must refuse damage with an integrity error (or a newer version
// with an input error), and what it accepts must be a valid manifest that
// encodes and decodes back to itself.
func FuzzDecode(f *testing.F) {
	good, err := manifest.Encode(sample())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd})
	f.Add([]byte(`{"version":1}`))
	newer := sample()
	newer.Version = manifest.Version + 1
	if data, err := manifest.Encode(newer); err == nil {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := manifest.Decode(data)
		if err != nil {
			if !errors.Is(err, tenantvault.ErrIntegrity) && !errors.As(err, new(*tenantvault.InputError)) {
				t.Fatalf("not an integrity or input error: %v", err)
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("accepted an invalid manifest: %v", err)
		}
		again, err := manifest.Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := manifest.Decode(again)
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
