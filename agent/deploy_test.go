package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// There is no container engine here to run deploy/ and docker-compose.yml;
// this test parses every manifest, checks the parts that must agree with
// each other, and loads every agent config they carry (and the one in
// docs/agent.md) through the same checks as `agent --check`.

func yamlDocs(t *testing.T, path string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var out []map[string]any
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, doc)
	}
}

func dig(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, _ := v.(map[string]any)
			v = m[k]
		case int:
			s, _ := v.([]any)
			if k >= len(s) {
				return nil
			}
			v = s[k]
		}
	}
	return v
}

func loadWith(t *testing.T, name, config string, env map[string]string) *Config {
	t.Helper()
	cfg, err := Load([]byte(config), func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("%s: the agent config does not pass --check:\n%v", name, err)
	}
	return cfg
}

func TestDeployKubernetes(t *testing.T) {
	docs := yamlDocs(t, "../deploy/kubernetes/agent.yaml")
	kinds := map[string]map[string]any{}
	for _, d := range docs {
		kinds[fmt.Sprint(d["kind"])] = d
	}
	for _, k := range []string{"ConfigMap", "Secret", "Deployment", "Service"} {
		if kinds[k] == nil {
			t.Fatalf("agent.yaml has no %s", k)
		}
	}
	// The ConfigMap's config, with url_file pointing at the Secret's value
	// as the volume would mount it.
	secretDir := t.TempDir()
	url := fmt.Sprint(dig(kinds["Secret"], "stringData", "main-url"))
	os.WriteFile(filepath.Join(secretDir, "main-url"), []byte(url), 0o600)
	config := strings.ReplaceAll(fmt.Sprint(dig(kinds["ConfigMap"], "data", "agent.yaml")), "/etc/tenantvault/secrets", secretDir)
	cfg := loadWith(t, "ConfigMap", config, nil)

	pod := dig(kinds["Deployment"], "spec", "template", "spec")
	c := dig(pod, "containers", 0)
	if p := dig(c, "livenessProbe", "httpGet", "path"); p != "/healthz" {
		t.Errorf("liveness probe %v", p)
	}
	if p := dig(c, "readinessProbe", "httpGet", "path"); p != "/readyz" {
		t.Errorf("readiness probe %v", p)
	}
	if !strings.HasSuffix(cfg.Listen, fmt.Sprint(":", dig(c, "ports", 0, "containerPort"))) {
		t.Errorf("listen %s, container port %v", cfg.Listen, dig(c, "ports", 0, "containerPort"))
	}
	// The pod must outlive the drain.
	if g, ok := dig(pod, "terminationGracePeriodSeconds").(int); !ok || float64(g) <= cfg.ShutdownTimeout.D.Seconds() {
		t.Errorf("terminationGracePeriodSeconds %v, shutdown_timeout %s", dig(pod, "terminationGracePeriodSeconds"), cfg.ShutdownTimeout.D)
	}

	job := yamlDocs(t, "../deploy/kubernetes/mass-restore-job.yaml")
	var spec any
	for _, d := range job {
		if d["kind"] == "Job" {
			spec = d["spec"]
		}
	}
	if dig(spec, "completionMode") != "Indexed" {
		t.Fatalf("restore job is not Indexed: %v", spec)
	}
	args := fmt.Sprint(dig(spec, "template", "spec", "containers", 0, "args"))
	want := fmt.Sprintf("--shard=$(JOB_COMPLETION_INDEX)/%v", dig(spec, "completions"))
	if !strings.Contains(args, want) || !strings.Contains(args, "--tenants-file=") {
		t.Errorf("restore job args %s lack %s and --tenants-file", args, want)
	}
}

func TestDeployCompose(t *testing.T) {
	docs := yamlDocs(t, "../docker-compose.yml")
	services, _ := docs[0]["services"].(map[string]any)
	for _, s := range []string{"postgres", "minio", "createbucket", "agent"} {
		if services[s] == nil {
			t.Fatalf("docker-compose.yml has no service %s", s)
		}
	}
	agent := services["agent"]
	for _, v := range dig(agent, "volumes").([]any) {
		src, _, _ := strings.Cut(fmt.Sprint(v), ":")
		if _, err := os.Stat(filepath.Join("..", src)); err != nil {
			t.Errorf("agent volume %s: %v", v, err)
		}
	}
	for _, v := range dig(services["postgres"], "volumes").([]any) {
		if src, _, _ := strings.Cut(fmt.Sprint(v), ":"); strings.HasPrefix(src, "./") {
			if _, err := os.Stat(filepath.Join("..", src)); err != nil {
				t.Errorf("postgres volume %s: %v", v, err)
			}
		}
	}
	if df := dig(agent, "build", "dockerfile"); df != "deploy/Dockerfile" {
		t.Errorf("agent dockerfile %v", df)
	}
	env := map[string]string{}
	for k, v := range dig(agent, "environment").(map[string]any) {
		env[k] = fmt.Sprint(v)
	}
	data, err := os.ReadFile("../deploy/compose/agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := loadWith(t, "deploy/compose/agent.yaml", string(data), env)
	if !strings.Contains(cfg.Repository, "endpoint=http://minio:9000") {
		t.Errorf("compose repository %s", cfg.Repository)
	}
	// The demo password of the agent's database user matches init.sql.
	initSQL, _ := os.ReadFile("../deploy/compose/init.sql")
	if !strings.Contains(string(initSQL), "PASSWORD 'demo-backup-password'") || !strings.Contains(env["DEMO_DATABASE_URL"], ":demo-backup-password@") {
		t.Error("the agent's database password does not match init.sql")
	}
}

func TestDocsExampleConfig(t *testing.T) {
	data, err := os.ReadFile("../docs/agent.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindStringSubmatch(string(data))
	if m == nil {
		t.Fatal("docs/agent.md has no yaml example")
	}
	loadWith(t, "docs/agent.md", m[1], map[string]string{"MAIN_DATABASE_URL": "postgres://backup:pw@db:5432/app"})
}

func TestDeploySystemdAndDockerfile(t *testing.T) {
	unit, err := os.ReadFile("../deploy/systemd/tenantvault-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ExecStart=/usr/local/bin/tenantvault agent --config", "DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes", "KillSignal=SIGTERM", "RestartPreventExitStatus=2"} {
		if !bytes.Contains(unit, []byte(want)) {
			t.Errorf("systemd unit lacks %s", want)
		}
	}
	df, err := os.ReadFile("../deploy/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"AS build", "postgresql-client-${PG_MAJOR}", "USER 10001", "./cmd/tenantvault"} {
		if !bytes.Contains(df, []byte(want)) {
			t.Errorf("Dockerfile lacks %s", want)
		}
	}
}
