package snapshot

import (
	"strings"
	"testing"
)

const splitSample = `--
-- PostgreSQL database dump
--

\restrict abc

SET statement_timeout = 0;
SELECT pg_catalog.set_config('search_path', '', false);

--
-- Name: t_a; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA t_a;


--
-- Name: SCHEMA t_a; Type: COMMENT; Schema: -; Owner: -
--

COMMENT ON SCHEMA t_a IS 'a';


--
-- Name: t_b; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA t_b;


--
-- Name: f(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS $$
SELECT 1
$$;


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: x; Type: TABLE; Schema: t_a; Owner: -
--

CREATE TABLE t_a.x (id int);


--
-- Name: x; Type: TABLE; Schema: t_b; Owner: -
--

CREATE TABLE t_b.x (id int);


--
-- Name: x x_pkey; Type: CONSTRAINT; Schema: t_a; Owner: -
--

ALTER TABLE ONLY t_a.x ADD CONSTRAINT x_pkey PRIMARY KEY (id);


--
-- PostgreSQL database dump complete
--

\unrestrict abc
`

func TestSplitScript(t *testing.T) {
	s, err := splitScript(strings.NewReader(splitSample), t.TempDir(), []string{"t_a", "t_b"}, 7)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if p := string(s.prelude); !strings.Contains(p, "SET statement_timeout = 0;") || strings.Contains(p, "t_a") || strings.Contains(p, `\restrict`) {
		t.Fatalf("prelude:\n%s", p)
	}
	a, _ := s.part(0)
	b, _ := s.part(1)
	shared, _ := s.part(-1)
	for _, want := range []string{"CREATE SCHEMA t_a;", "COMMENT ON SCHEMA t_a", "SET default_tablespace = '';", "SET default_table_access_method = heap;", "CREATE TABLE t_a.x", "x_pkey"} {
		if !strings.Contains(string(a), want) {
			t.Errorf("t_a's part lacks %q:\n%s", want, a)
		}
	}
	// t_b's table was written under the same settings, emitted once before
	// t_a's: its part must carry them too.
	for _, want := range []string{"CREATE SCHEMA t_b;", "SET default_table_access_method = heap;", "CREATE TABLE t_b.x"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("t_b's part lacks %q:\n%s", want, b)
		}
	}
	if strings.Contains(string(b), "t_a") || strings.Contains(string(a), "t_b") {
		t.Errorf("parts mix tenants:\n%s\n---\n%s", a, b)
	}
	if !strings.Contains(string(shared), "CREATE FUNCTION public.f()") || strings.Contains(string(shared), "SET default_tablespace") || strings.Contains(string(shared), "t_a") {
		t.Errorf("shared part:\n%s", shared)
	}
}

func TestSplitScriptRefusesForgedHeaders(t *testing.T) {
	// A tenant's function whose body holds a header naming another tenant
	// must not move the rest of its body into that tenant's part.
	forged := strings.Replace(splitSample, "SELECT 1\n", "SELECT 1\n\n--\n-- Name: y; Type: TABLE; Schema: t_b; Owner: -\n--\nDROP TABLE t_b.x;\n", 1)
	if _, err := splitScript(strings.NewReader(forged), t.TempDir(), []string{"t_a", "t_b"}, 7); err == nil || !strings.Contains(err.Error(), "8 object headers") {
		t.Fatalf("forged header: %v", err)
	}
	ambiguous := strings.Replace(splitSample, "-- Name: x; Type: TABLE; Schema: t_a;", "-- Name: x; Type: TABLE; Schema: t_b; Type: TABLE; Schema: t_a;", 1)
	if _, err := splitScript(strings.NewReader(ambiguous), t.TempDir(), []string{"t_a", "t_b"}, 7); err == nil || !strings.Contains(err.Error(), "ambiguous") {
		t.Fatalf("ambiguous header: %v", err)
	}
}
