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
func (v *Vault) PutSchema(ctx context.Context, database string, data []byte) (manifest.SchemaDump, error) {
	sum := sha256.Sum256(data)
	d := manifest.SchemaDump{Database: database, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data))}
	d.Key = SchemasPrefix + d.SHA256 + ".dump"
	// Written even when an earlier set stored the same archive: rewriting
	// identical content changes only its modification time, and that keeps
	// GC (which never collects an object younger than its minimum age) away
	// from an archive no manifest references yet but this set is about to.
	if err := v.b.Put(ctx, d.Key, bytes.NewReader(data), d.Size); err != nil {
		return d, fmt.Errorf("store schema: %w", err)
	}
	return d, nil
}

// GetSchema reads a schema archive and checks its checksum.
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
	return data, nil
}
