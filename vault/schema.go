package vault

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
)

// PutSchema stores a schema archive under its SHA-256, so an unchanged schema
// is stored once for all sets.
// In an encrypted repository, use SetWriter.PutSchema, which seals it.
func (v *Vault) PutSchema(ctx context.Context, database string, data []byte) (manifest.SchemaDump, error) {
	if v.cfg.Encrypted() {
		return manifest.SchemaDump{}, errors.New("store schema: the repository is encrypted: use SetWriter.PutSchema")
	}
	d := v.schemaDump(database, data)
	// Written even when an earlier set stored the same archive: rewriting
	// identical content changes only its modification time, and that keeps
	// GC (which never collects an object younger than its minimum age) away
	// from an archive no manifest references yet but this set is about to.
	if err := v.b.Put(ctx, d.Key, bytes.NewReader(data), d.Size); err != nil {
		return d, fmt.Errorf("store schema: %w", err)
	}
	return d, nil
}

// schemaDump names a stored schema archive by the SHA-256 of its bytes.
func (v *Vault) schemaDump(database string, stored []byte) manifest.SchemaDump {
	sum := sha256.Sum256(stored)
	return schemaDumpOf(database, sum[:], int64(len(stored)))
}

func schemaDumpOf(database string, sum []byte, size int64) manifest.SchemaDump {
	d := manifest.SchemaDump{Database: database, SHA256: hex.EncodeToString(sum), Size: size}
	d.Key = SchemasPrefix + d.SHA256 + ".dump"
	return d
}

// storeSchemaFile stores the bytes of f (from its start) as a schema
// archive named by their SHA-256, streamed from the file. It is rewritten
// even when it exists (see PutSchema).
func (v *Vault) storeSchemaFile(ctx context.Context, database string, f *os.File) (manifest.SchemaDump, error) {
	h := sha256.New()
	size, err := io.Copy(h, io.NewSectionReader(f, 0, 1<<62))
	if err != nil {
		return manifest.SchemaDump{}, fmt.Errorf("store schema: %w", err)
	}
	d := schemaDumpOf(database, h.Sum(nil), size)
	if err := v.b.Put(ctx, d.Key, io.NewSectionReader(f, 0, size), size); err != nil {
		return d, fmt.Errorf("store schema: %w", err)
	}
	return d, nil
}

// GetSchema reads a schema archive and checks its checksum. In an encrypted
// repository the archive must belong to a set whose manifest was read
// through this vault; it is decrypted with that set's data key.
func (v *Vault) GetSchema(ctx context.Context, d manifest.SchemaDump) ([]byte, error) {
	data, err := repo.ReadAll(ctx, v.b, d.Key)
	if errors.Is(err, repo.ErrNotFound) {
		return nil, tenantvault.Integrityf("schema archive %s is missing", d.Key)
	}
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	if hex.EncodeToString(sum[:]) != d.SHA256 || int64(len(data)) != d.Size {
		return nil, tenantvault.Integrityf("schema archive %s is damaged (checksum mismatch)", d.Key)
	}
	if !v.cfg.Encrypted() {
		if len(data) > 0 && data[0] == CodecSealed {
			// pg_dump archives start with "PGDMP": a sealed archive in a
			// plaintext repository was put there by someone else.
			return nil, tenantvault.Integrityf("schema archive %s is encrypted, but the repository is not", d.Key)
		}
		return data, nil
	}
	set, ok := v.schemas.Load(d.Key)
	if !ok {
		return nil, fmt.Errorf("schema archive %s: no decrypted manifest references it", d.Key)
	}
	dk, err := v.objectKey(ctx, set.(string), d.Key)
	if err != nil {
		return nil, err
	}
	plain, err := openBytes(dk, data, maxManifestSize)
	if err != nil {
		return nil, tenantvault.Integrityf("schema archive %s: %v", d.Key, err)
	}
	return plain, nil
}

// schemaPartsMagic starts a split schema object (docs/FORMAT.md, "Split
// schema SQL").
const schemaPartsMagic = "tenantvault schema parts 1\n"

// maxSchemaPart bounds what one stored part may inflate to.
const maxSchemaPart = 1 << 30

// PutSchemaSplit stores a schema rendered as SQL and cut into parts: the
// prelude, the shared part, then one part per tenant (part(i) for
// tenants[i], tenants sorted), each stored like an index page (codec byte
// and one zstd frame), under the SHA-256 of the whole object, so an
// unchanged schema is stored once for all sets. The object is spooled to a
// temporary file in dir ("" the system's): its memory is one part. It
// returns the header's reference and each tenant's range. Plaintext
// repositories only: in an encrypted one, SetWriter.PutSchemaSplit seals
// the parts.
func (v *Vault) PutSchemaSplit(ctx context.Context, dir string, prelude, shared []byte, tenants []string, part func(i int) ([]byte, error)) (*manifest.SchemaSplit, map[string]manifest.Range, error) {
	if v.cfg.Encrypted() {
		return nil, nil, errors.New("store split schema: the repository is encrypted: use SetWriter.PutSchemaSplit")
	}
	return v.putSchemaSplit(ctx, dir, prelude, shared, tenants, part, nil)
}

// putSchemaSplit writes the split object; seal, when not nil, seals each
// stored part (tenant -1 for the prelude and the shared part).
func (v *Vault) putSchemaSplit(ctx context.Context, dir string, prelude, shared []byte, tenants []string, part func(i int) ([]byte, error), seal func(tenant int, stored []byte) ([]byte, error)) (*manifest.SchemaSplit, map[string]manifest.Range, error) {
	f, err := os.CreateTemp(dir, "tenantvault-parts-*")
	if err != nil {
		return nil, nil, fmt.Errorf("store split schema: %w", err)
	}
	defer f.Close()
	os.Remove(f.Name())
	whole := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(f, whole), 1<<20)
	var size int64
	bw.WriteString(schemaPartsMagic)
	size += int64(len(schemaPartsMagic))
	add := func(tenant int, content []byte) (manifest.Range, error) {
		stored := storePage(content)
		if seal != nil {
			var err error
			if stored, err = seal(tenant, stored); err != nil {
				return manifest.Range{}, fmt.Errorf("store split schema: %w", err)
			}
		}
		sum := sha256.Sum256(stored)
		r := manifest.Range{Offset: size, Length: int64(len(stored)), SHA256: hex.EncodeToString(sum[:])}
		bw.Write(stored)
		size += r.Length
		return r, nil
	}
	sp := &manifest.SchemaSplit{}
	if sp.Prelude, err = add(-1, prelude); err != nil {
		return nil, nil, err
	}
	if sp.Shared, err = add(-1, shared); err != nil {
		return nil, nil, err
	}
	ranges := make(map[string]manifest.Range, len(tenants))
	for i, t := range tenants {
		if i > 0 && t <= tenants[i-1] {
			return nil, nil, fmt.Errorf("store split schema: tenants out of order at %q", t)
		}
		content, err := part(i)
		if err != nil {
			return nil, nil, err
		}
		if ranges[t], err = add(i, content); err != nil {
			return nil, nil, err
		}
	}
	if err := bw.Flush(); err != nil {
		return nil, nil, fmt.Errorf("store split schema: %w", err)
	}
	sp.SHA256, sp.Size = hex.EncodeToString(whole.Sum(nil)), size
	sp.Key = SchemasPrefix + sp.SHA256 + ".parts"
	// Rewritten even when it exists, as PutSchema does (GC's minimum age).
	if err := v.b.Put(ctx, sp.Key, io.NewSectionReader(f, 0, size), size); err != nil {
		return nil, nil, fmt.Errorf("store split schema: %w", err)
	}
	return sp, ranges, nil
}

// GetSchemaPart reads one part of a split schema with one ranged GET and
// checks it against its range's checksum: tenant's part, or with tenant nil
// the prelude or the shared part. In an encrypted repository a tenant's part
// is sealed with the key its entry names (so erasing the tenant's key
// erases its part), the others with their set's data key; the set's
// manifest must have been read through this vault.
func (v *Vault) GetSchemaPart(ctx context.Context, sp *manifest.SchemaSplit, r manifest.Range, tenant *manifest.Tenant) ([]byte, error) {
	if r.Offset < int64(len(schemaPartsMagic)) || r.Length <= 0 || r.Offset+r.Length > sp.Size {
		return nil, tenantvault.Integrityf("split schema %s: a part at %d+%d outside the object (%d bytes)", sp.Key, r.Offset, r.Length, sp.Size)
	}
	rc, err := v.b.Get(ctx, sp.Key, r.Offset, r.Length)
	if errors.Is(err, repo.ErrNotFound) {
		return nil, tenantvault.Integrityf("split schema %s is missing", sp.Key)
	}
	if err != nil {
		return nil, fmt.Errorf("read split schema %s: %w", sp.Key, err)
	}
	defer rc.Close()
	stored := make([]byte, r.Length)
	if _, err := io.ReadFull(rc, stored); err != nil {
		return nil, tenantvault.Integrityf("split schema %s: truncated part at %d: %v", sp.Key, r.Offset, err)
	}
	if sum := sha256.Sum256(stored); hex.EncodeToString(sum[:]) != r.SHA256 {
		return nil, tenantvault.Integrityf("split schema %s: part at %d is damaged (checksum mismatch)", sp.Key, r.Offset)
	}
	if v.cfg.Encrypted() {
		if stored[0] != CodecSealed {
			return nil, tenantvault.Integrityf("split schema %s: part at %d is not sealed, but the repository is encrypted", sp.Key, r.Offset)
		}
		var dk []byte
		if tenant != nil {
			if tenant.Key == "" {
				return nil, tenantvault.Integrityf("split schema %s: tenant %q has a part but no key", sp.Key, tenant.ID)
			}
			dk, err = v.tenantDataKey(ctx, fmt.Sprintf("the schema of tenant %q", tenant.ID), tenant.Key)
		} else if set, ok := v.schemas.Load(sp.Key); !ok {
			return nil, fmt.Errorf("split schema %s: no decrypted manifest references it", sp.Key)
		} else {
			dk, err = v.objectKey(ctx, set.(string), sp.Key)
		}
		if err != nil {
			return nil, err
		}
		if stored, err = openBytes(dk, stored, maxSchemaPart); err != nil {
			return nil, tenantvault.Integrityf("split schema %s: part at %d: %v", sp.Key, r.Offset, err)
		}
	}
	if len(stored) == 0 || stored[0] != CodecZstd {
		return nil, tenantvault.Integrityf("split schema %s: part at %d has an unknown codec", sp.Key, r.Offset)
	}
	content, err := pageDecoder.DecodeAll(stored[1:], nil)
	if err != nil || len(content) > maxSchemaPart {
		return nil, tenantvault.Integrityf("split schema %s: part at %d is damaged: %v", sp.Key, r.Offset, err)
	}
	return content, nil
}
