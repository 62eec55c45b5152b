package vault_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/vault"
)

// TestColumnarChunks writes chunks in the columnar layout, plaintext and
// sealed, and reads them back exactly: rows over several blocks, a row
// longer than a block, content that is not COPY text. The set is of set
// format 6; the same chunks named by a set of format 5 are refused as
// damaged, never decoded.
func TestColumnarChunks(t *testing.T) {
	var rows strings.Builder
	at := time.Date(2021, 7, 16, 18, 31, 37, 660254000, time.UTC)
	for i := range 60000 {
		fmt.Fprintf(&rows, "%d\tt%04d\tuser %d said \\t hello\\n\t%s+00\t\\N\n", 80000+i*7, i%13, i, at.Add(time.Duration(i)*time.Second).Format("2006-01-02 15:04:05.999999"))
	}
	content := map[string]string{
		"rows":   rows.String(),
		"long":   "1\t" + strings.Repeat("é", 700000) + "\n2\tb\n",
		"binary": "\x00\xff\t\x80\n\r\n\t\t\x00",
		"one":    "1\n",
	}
	ks := newKeySet(t)
	for _, encrypted := range []bool{false, true} {
		t.Run(fmt.Sprintf("encrypted=%v", encrypted), func(t *testing.T) {
			ctx := context.Background()
			dir, b := newRepoDir(t)
			var writer, reader *vault.Vault
			if encrypted {
				writer, reader = openWith(t, b, ks.writer, true), openWith(t, b, ks.reader, false)
			} else {
				writer, reader = openWith(t, b, nil, true), openWith(t, b, nil, false)
			}
			id := writeTenantSet(t, writer, tenantSet{at: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), tenants: content}).ID
			m, err := reader.ReadManifest(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if m.Version != manifest.Version6 {
				t.Fatalf("set format %d, want %d", m.Version, manifest.Version6)
			}
			var stored int64
			for _, tn := range m.Tenants {
				got, err := readChunk(t, reader, m, tn.Chunks[0])
				if err != nil || got != content[tn.ID] {
					t.Fatalf("tenant %s: %d bytes back of %d, %v", tn.ID, len(got), len(content[tn.ID]), err)
				}
				if tn.ID == "rows" {
					stored = tn.Chunks[0].Length
				}
			}
			if !encrypted {
				pack, err := os.ReadFile(filepath.Join(dir, m.Packs[m.Tenants[0].Chunks[0].Pack]))
				if err != nil {
					t.Fatal(err)
				}
				if c := pack[m.Tenants[0].Chunks[0].Offset]; c != vault.CodecColumnar {
					t.Fatalf("codec %d, want %d", c, vault.CodecColumnar)
				}
			}
			t.Logf("%d bytes of rows stored in %d", len(content["rows"]), stored)

			old := *m
			old.Version = manifest.Version5
			_, err = readChunk(t, reader, &old, m.Tenants[0].Chunks[0])
			if !errors.Is(err, tenantvault.ErrIntegrity) || !strings.Contains(err.Error(), "codec 3 in a set of format 5") {
				t.Fatalf("a columnar chunk in set format 5: %v", err)
			}
		})
	}
}

// TestSetFormat1ReusesNoColumnarChunks: a writer of set format 1 (what
// builds before set format 2 read) does not point its set at the
// columnar chunks of an earlier set of format 6.
func TestSetFormat1ReusesNoColumnarChunks(t *testing.T) {
	ctx := context.Background()
	_, b := newRepoDir(t)
	m := writeTenantSet(t, openWith(t, b, nil, true), tenantSet{at: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), tenants: map[string]string{"a": "1\tx\n"}})
	v1, err := vault.Open(ctx, b, vault.Options{SetFormat: manifest.Version1})
	if err != nil {
		t.Fatal(err)
	}
	next := *m
	next.ID = vault.NewSetID(time.Date(2026, 3, 1, 13, 0, 0, 0, time.UTC))
	ix, err := v1.PreviousChunks(ctx, &next)
	if err != nil || ix.Set != "" {
		t.Fatalf("a set format 1 writer deduplicates against %q (%v)", ix.Set, err)
	}
	if ix, err := openWith(t, b, nil, false).PreviousChunks(ctx, &next); err != nil || ix.Set != m.ID {
		t.Fatalf("a set format 6 writer deduplicates against %q, want %s (%v)", ix.Set, m.ID, err)
	}
}
