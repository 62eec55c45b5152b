package snapshot

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/tenancy"
)

// splitSQL is a schema script cut into parts (docs/FORMAT.md, "Split
// schema SQL"): the prelude before the first object, the objects outside
// tenant schemas, and each tenant schema's objects, in the script's order.
type splitSQL struct {
	f        *os.File // the script
	prelude  []byte
	sections []section
	settings []string  // SET default_tablespace / default_table_access_method lines, interned
	tenants  []string  // sorted; section.owner indexes it, -1 is shared
	byOwner  [][]int32 // sections of each owner in order; [0] shared, [i+1] tenants[i]
}

// section is one object of the script: its bytes and owner, and the
// storage settings (interned, 0 none) in force when it starts.
type section struct {
	off, n     int64
	owner      int32
	tablespace int32
	am         int32
}

func (s *splitSQL) close() {
	if s != nil && s.f != nil {
		s.f.Close()
	}
}

// errNoSplit explains why a script is not split; the set then keeps only
// its archive, and restores read it whole, as before.
type errNoSplit struct{ why string }

func (e *errNoSplit) Error() string { return "schema not split: " + e.why }

// parseHeader reads pg_dump's object header "-- Name: N; Type: T; Schema:
// S; Owner: O" (plain format; names unquoted, line breaks replaced).
// A header whose delimiters occur twice (a name holding "; Type: ", say)
// is ambiguous and refused.
func parseHeader(line string) (name, typ, schema string, ok bool, err error) {
	rest, ok := strings.CutPrefix(line, "-- Name: ")
	if !ok {
		return "", "", "", false, nil
	}
	for _, d := range []string{"; Type: ", "; Schema: ", "; Owner: "} {
		if strings.Count(rest, d) != 1 {
			return "", "", "", false, &errNoSplit{fmt.Sprintf("ambiguous object header %.80q", line)}
		}
	}
	name, rest, _ = strings.Cut(rest, "; Type: ")
	typ, rest, ok1 := strings.Cut(rest, "; Schema: ")
	schema, _, ok2 := strings.Cut(rest, "; Owner: ")
	if !ok1 || !ok2 {
		return "", "", "", false, &errNoSplit{fmt.Sprintf("object header out of order %.80q", line)}
	}
	return name, typ, schema, true, nil
}

// storageSetting tells the session settings pg_dump emits between objects,
// before the object they apply to.
func storageSetting(line string) (kind int, ok bool) {
	switch {
	case strings.HasPrefix(line, "SET default_tablespace = "):
		return 0, true
	case strings.HasPrefix(line, "SET default_table_access_method = "):
		return 1, true
	}
	return 0, false
}

// splitScript reads a pg_restore --schema-only script from r (spooled to a
// temporary file in dir) and cuts it at its object headers. tenants are
// the tenant schemas (sorted); entries is the number of objects pg_restore
// -l lists that the script prints: a header forged inside a function body
// would make one more, and the script is then not split.
func splitScript(r io.Reader, dir string, tenants []string, entries int) (*splitSQL, error) {
	owner := make(map[string]int32, len(tenants))
	for i, t := range tenants {
		if strings.ContainsAny(t, "\n\r") || strings.Contains(t, "; ") {
			return nil, &errNoSplit{fmt.Sprintf("tenant schema %q cannot be told apart in pg_dump's headers", t)}
		}
		owner[t] = int32(i)
	}
	f, err := os.CreateTemp(dir, "tenantvault-schema-*.sql")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	s := &splitSQL{f: f, tenants: tenants}
	ok := false
	defer func() {
		if !ok {
			s.close()
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 256<<20)
	var (
		off       int64 // of the next line
		cur       = -1  // section being read, -1 the prelude
		prev      string
		prevOff   int64
		runStart  int64 = -1 // trailing blank and storage-setting lines
		runSets   []int      // lines (interned) of that run
		state     [2]int32
		intern    = map[string]int32{}
		headers   int
		prelude   bytes.Buffer
		preludeTo int64 = -1
	)
	s.settings = []string{""}
	endSection := func(at int64) {
		if cur >= 0 {
			s.sections[cur].n = at - s.sections[cur].off
		} else if preludeTo < 0 {
			preludeTo = at
		}
	}
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, `\restrict `) || strings.HasPrefix(line, `\unrestrict `) {
			continue // psql-only guards (see restore.renderSchema)
		}
		if strings.HasPrefix(line, `\`) {
			return nil, &errNoSplit{fmt.Sprintf("unexpected psql meta-command %.40q", line)}
		}
		name, typ, schema, isHeader, err := parseHeader(line)
		if err != nil {
			return nil, err
		}
		if isHeader && prev == "--" {
			headers++
			start := prevOff
			if runStart >= 0 && runStart < prevOff {
				start = runStart
				for _, id := range runSets {
					k, _ := storageSetting(s.settings[id])
					state[k] = int32(id)
				}
			}
			endSection(start)
			o := int32(-1)
			if i, ok := owner[schema]; ok {
				o = i
			} else if schema == "-" {
				if i, ok := owner[name]; ok && typ == "SCHEMA" {
					o = i
				} else if i, ok := owner[strings.TrimPrefix(name, "SCHEMA ")]; ok && strings.HasPrefix(name, "SCHEMA ") {
					o = i // COMMENT ON SCHEMA, SECURITY LABEL, ACL
				}
			}
			s.sections = append(s.sections, section{off: prevOff, owner: o, tablespace: state[0], am: state[1]})
			cur = len(s.sections) - 1
			runStart, runSets = -1, nil
		}
		lineOff := off
		bw.WriteString(line)
		bw.WriteByte('\n')
		off += int64(len(line)) + 1
		if cur < 0 && preludeTo < 0 {
			prelude.WriteString(line)
			prelude.WriteByte('\n')
		}
		if _, isSet := storageSetting(line); isSet {
			id, seen := intern[line]
			if !seen {
				id = int32(len(s.settings))
				intern[line] = id
				s.settings = append(s.settings, line)
			}
			if runStart < 0 {
				runStart = lineOff
			}
			runSets = append(runSets, int(id))
		} else if line == "" {
			if runStart < 0 {
				runStart = lineOff
			}
		} else if line != "--" && !isHeader {
			runStart, runSets = -1, nil
		}
		prev, prevOff = line, lineOff
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("split schema: %w", err)
	}
	endSection(off)
	if err := bw.Flush(); err != nil {
		return nil, fmt.Errorf("split schema: %w", err)
	}
	if headers != entries {
		return nil, &errNoSplit{fmt.Sprintf("the script has %d object headers, the archive lists %d objects", headers, entries)}
	}
	if preludeTo >= 0 && int64(prelude.Len()) > preludeTo {
		prelude.Truncate(int(preludeTo))
	}
	s.prelude = bytes.Clone(prelude.Bytes())
	s.byOwner = make([][]int32, len(tenants)+1)
	for i, sec := range s.sections {
		s.byOwner[sec.owner+1] = append(s.byOwner[sec.owner+1], int32(i))
	}
	ok = true
	return s, nil
}

// part renders the sections of owner o (-1 the shared part) in script
// order, each preceded by the storage settings it was written under when
// they differ from those in force in the part so far.
func (s *splitSQL) part(o int32) ([]byte, error) {
	var out bytes.Buffer
	var state [2]int32
	for _, i := range s.byOwner[o+1] {
		sec := s.sections[i]
		for k, want := range [2]int32{sec.tablespace, sec.am} {
			if want != state[k] && want != 0 {
				out.WriteString(s.settings[want])
				out.WriteString("\n\n")
				state[k] = want
			}
		}
		buf := make([]byte, sec.n)
		if _, err := s.f.ReadAt(buf, sec.off); err != nil {
			return nil, fmt.Errorf("split schema: %w", err)
		}
		out.Write(stripStorageSettings(buf))
	}
	return out.Bytes(), nil
}

// stripStorageSettings drops the trailing storage-setting lines of a
// section: they belong to the next object, and part writes them there.
func stripStorageSettings(b []byte) []byte {
	end := len(b)
	for end > 0 {
		i := bytes.LastIndexByte(b[:end-1], '\n') + 1
		line := string(b[i : end-1])
		if _, ok := storageSetting(line); !ok && line != "" {
			break
		}
		end = i
	}
	return append(b[:end:end], '\n')
}

// countEntries counts the objects pg_restore -l lists that a script with
// --no-owner --no-privileges prints a header for (every one but ACLs).
func countEntries(list []byte) int {
	n := 0
	for _, line := range strings.Split(string(list), "\n") {
		if line == "" || strings.HasPrefix(line, ";") {
			continue
		}
		// "<id>; <tableoid> <oid> <type> <schema> <name> <owner>"
		f := strings.Fields(line)
		if len(f) >= 4 && (f[3] == "ACL" || len(f) >= 5 && f[3] == "DEFAULT" && f[4] == "ACL") {
			continue
		}
		n++
	}
	return n
}

// lookPgRestore finds pg_restore next to pg_dump, else on the PATH.
func lookPgRestore(pgDump string) (string, error) {
	if path, err := exec.LookPath(pgDump); err == nil {
		if p := filepath.Join(filepath.Dir(path), "pg_restore"); p != "" {
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
		}
	}
	return exec.LookPath("pg_restore")
}

// splitArchive renders the schema-only archive at archive with pg_restore
// and splits it for the tenant schemas. An *errNoSplit says the archive
// stays whole.
func splitArchive(ctx context.Context, pgDump, archive string, tenants []string, dir string) (*splitSQL, error) {
	path, err := lookPgRestore(pgDump)
	if err != nil {
		return nil, &errNoSplit{"no pg_restore: " + err.Error()}
	}
	var list, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, "--list", archive)
	cmd.Stdout, cmd.Stderr = &list, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("pg_restore --list: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	sorted := append([]string(nil), tenants...)
	sort.Strings(sorted)
	cmd = exec.CommandContext(ctx, path, "--schema-only", "--no-owner", "--no-privileges", "--file=-", archive)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr.Reset()
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s, serr := splitScript(stdout, dir, sorted, countEntries(list.Bytes()))
	if serr != nil {
		io.Copy(io.Discard, stdout)
	}
	if err := cmd.Wait(); err != nil {
		s.close()
		return nil, fmt.Errorf("pg_restore --schema-only: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return s, serr
}

// splitSchema stores the schema model's archive also as split SQL (set
// format 2 and later; sealed in encrypted repositories), so that restoring
// one tenant schema reads its part and not the archive. A schema that
// cannot be split is kept whole, with a warning: restores then read the
// archive, as before.
func (r *run) splitSchema(ctx context.Context, d *manifest.SchemaDump, archive string) error {
	v := r.o.Vault
	if r.o.Tenancy.Model != tenancy.ModelSchema || !v.WritesIndexed() || len(r.owners) == 0 {
		return nil
	}
	tenants := r.owners
	if r.splitTenants != nil {
		tenants = r.splitTenants
	}
	s, err := splitArchive(ctx, r.o.PgDump, archive, tenants, r.o.TempDir)
	if err == nil {
		defer s.close()
		var sp *manifest.SchemaSplit
		var shared []byte
		if shared, err = s.part(-1); err == nil {
			sp, r.schemaParts, err = r.w.PutSchemaSplit(ctx, r.o.TempDir, s.prelude, shared, s.tenants, func(i int) ([]byte, error) { return s.part(int32(i)) })
		}
		if err == nil {
			d.Split = sp
			return nil
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	r.schemaParts = nil
	r.o.Logger.Warn("the schema archive is stored whole only: restoring one tenant schema will read all of it", "err", err)
	return nil
}
