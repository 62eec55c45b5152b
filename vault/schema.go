package vault

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

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
	d := manifest.SchemaDump{Database: database, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(stored))}
	d.Key = SchemasPrefix + d.SHA256 + ".dump"
	return d
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
