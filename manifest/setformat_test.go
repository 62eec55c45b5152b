package manifest_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
)

// TestSetFormat2Header: a set format 2 header is read only as what it is:
// with its index reference, without tenants; a newer format is refused as
// such, not as damage.
func TestSetFormat2Header(t *testing.T) {
	hdr := func() *manifest.Manifest { return header(manifest.Version2) }
	decode := func(m *manifest.Manifest) error { return roundTrip(t, m) }
	if err := decode(hdr()); err != nil {
		t.Fatalf("header: %v", err)
	}
	withTenants := hdr()
	withTenants.Tenants = []manifest.Tenant{{ID: "a"}}
	noIndex := hdr()
	noIndex.Index = nil
	badCount := hdr()
	badCount.Stats.Tenants = 3
	outside := hdr()
	outside.Index.Directory.Offset = 80
	v1WithIndex := hdr()
	v1WithIndex.Version = manifest.Version1
	for name, m := range map[string]*manifest.Manifest{"tenants": withTenants, "no index": noIndex, "count": badCount, "directory outside": outside, "v1 with index": v1WithIndex} {
		if err := decode(m); !errors.Is(err, tenantvault.ErrIntegrity) {
			t.Errorf("%s: %v, want an integrity error", name, err)
		}
	}
	newer := hdr()
	newer.Version = manifest.Version + 1
	var ie *tenantvault.InputError
	if err := decode(newer); !errors.As(err, &ie) || !errors.Is(err, manifest.ErrNewerVersion) {
		t.Errorf("newer format: %v", err)
	}
}

// TestSchemaBatchesFormat: a schema dumped in batches is read only in set
// format 5, with the shared archive and its split first, then archives of
// tenant schemas of the same database.
func TestSchemaBatchesFormat(t *testing.T) {
	hdr := func() *manifest.Manifest {
		m := header(manifest.Version5)
		m.TablePositions = []int{}
		m.Schemas = []manifest.SchemaDump{
			{Database: "saas", Key: "schemas/a.dump", Covers: manifest.CoversShared, Split: &manifest.SchemaSplit{Key: "schemas/s.parts"}},
			{Database: "saas", Key: "schemas/b.dump", Covers: manifest.CoversTenants},
			{Database: "saas", Key: "schemas/c.dump", Covers: manifest.CoversTenants},
		}
		return m
	}
	decode := func(m *manifest.Manifest) error { return roundTrip(t, m) }
	if err := decode(hdr()); err != nil {
		t.Fatalf("set format 5: %v", err)
	}
	format4 := hdr()
	format4.Version = manifest.Version4
	noSplit := hdr()
	noSplit.Schemas[0].Split = nil
	tenantsFirst := hdr()
	tenantsFirst.Schemas[0], tenantsFirst.Schemas[1] = tenantsFirst.Schemas[1], tenantsFirst.Schemas[0]
	otherDB := hdr()
	otherDB.Schemas[2].Database = "other"
	alone := hdr()
	alone.Schemas = alone.Schemas[:1]
	for name, m := range map[string]*manifest.Manifest{"format 4": format4, "no split": noSplit, "tenants first": tenantsFirst, "other database": otherDB, "shared alone": alone} {
		if err := decode(m); !errors.Is(err, tenantvault.ErrIntegrity) {
			t.Errorf("%s: %v, want an integrity error", name, err)
		}
	}
}

// header is a valid set header of format version with two tenants.
func header(version int) *manifest.Manifest {
	return &manifest.Manifest{Version: version, ID: "20261128T110145.123Z-1a2b3c4d", Kind: manifest.KindManual,
		Index: &manifest.Index{Key: "sets/20261128T110145.123Z-1a2b3c4d.tidx", Size: 100, Pages: 1, Tenants: 2,
			Directory: manifest.Range{Offset: 60, Length: 40, SHA256: strings.Repeat("0", 64)}},
		Stats: manifest.Stats{Tenants: 2}}
}

// roundTrip encodes m and returns what decoding it says.
func roundTrip(t *testing.T, m *manifest.Manifest) error {
	t.Helper()
	data, err := manifest.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	_, err = manifest.Decode(data)
	return err
}
