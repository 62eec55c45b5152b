package tools

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"go.yaml.in/yaml/v3"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/tenantvault/tenantvault/agent"
	"github.com/tenantvault/tenantvault/vault"
)

const (
	chartDir       = root + "/deploy/helm/tenantvault"
	allValuesFile  = chartDir + "/ci/all-features-values.yaml"
	releaseName    = "tenantvault"
	releaseNS      = "backups"
	secretsMounted = "/etc/tenantvault/secrets"
	keysMounted    = "/etc/tenantvault/keys"
)

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	return ch
}

func valuesOf(t *testing.T, file string) map[string]any {
	t.Helper()
	if file == "" {
		return map[string]any{}
	}
	v, err := chartutil.ReadValuesFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// render renders the chart as `helm install --dry-run` would, with missing
// values an error (Strict), and returns the manifests by template.
func render(t *testing.T, vals map[string]any) (map[string]string, error) {
	t.Helper()
	ch := loadChart(t)
	rv, err := chartutil.ToRenderValues(ch, vals, chartutil.ReleaseOptions{Name: releaseName, Namespace: releaseNS, Revision: 1, IsInstall: true}, chartutil.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	return engine.Engine{Strict: true}.Render(ch, rv)
}

// object is one rendered manifest, decoded.
type object struct {
	source string
	kind   string
	name   string
	obj    any
	raw    map[string]any
}

// decodeStrict decodes a manifest into a Kubernetes API type the way the
// API server's strict field validation does: an unknown or duplicate field
// is an error.
func decodeStrict(doc string, into any) error {
	return sigsyaml.UnmarshalStrict([]byte(doc), into)
}

// manifests renders the chart and decodes every manifest strictly into its
// API type; the Prometheus Operator's kinds are decoded as unstructured.
func manifests(t *testing.T, vals map[string]any) map[string]*object {
	t.Helper()
	out, err := render(t, vals)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	objs := map[string]*object{}
	for _, source := range sortedKeys(out) {
		if !strings.HasSuffix(source, ".yaml") {
			continue // NOTES.txt, helpers
		}
		docs := releaseutil.SplitManifests(out[source])
		for _, k := range sortedKeys(docs) {
			doc := docs[k]
			var tm metav1.TypeMeta
			if err := sigsyaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Fatalf("%s: %v\n%s", source, err, doc)
			}
			if tm.Kind == "" {
				if strings.TrimSpace(stripComments(doc)) != "" {
					t.Errorf("%s: a manifest without kind:\n%s", source, doc)
				}
				continue
			}
			o := &object{source: source, kind: tm.Kind}
			var typed any
			switch tm.APIVersion + " " + tm.Kind {
			case "v1 ConfigMap":
				typed = &corev1.ConfigMap{}
			case "v1 Service":
				typed = &corev1.Service{}
			case "v1 ServiceAccount":
				typed = &corev1.ServiceAccount{}
			case "apps/v1 Deployment":
				typed = &appsv1.Deployment{}
			case "batch/v1 CronJob":
				typed = &batchv1.CronJob{}
			case "batch/v1 Job":
				typed = &batchv1.Job{}
			case "monitoring.coreos.com/v1 ServiceMonitor", "monitoring.coreos.com/v1 PrometheusRule":
			default:
				t.Errorf("%s: unexpected %s %s", source, tm.APIVersion, tm.Kind)
				continue
			}
			if typed != nil {
				if err := decodeStrict(doc, typed); err != nil {
					t.Errorf("%s: %s does not decode strictly: %v", source, tm.Kind, err)
					continue
				}
				o.obj = typed
			}
			if err := sigsyaml.Unmarshal([]byte(doc), &o.raw); err != nil {
				t.Fatal(err)
			}
			o.name, _ = dig(o.raw, "metadata", "name").(string)
			if o.name == "" {
				t.Errorf("%s: %s without metadata.name", source, tm.Kind)
			}
			key := tm.Kind + "/" + o.name
			if objs[key] != nil {
				t.Errorf("%s: %s rendered twice", source, key)
			}
			objs[key] = o
		}
	}
	return objs
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

func dig(v any, path ...string) any {
	for _, p := range path {
		m, _ := v.(map[string]any)
		v = m[p]
	}
	return v
}

func kinds(objs map[string]*object) []string {
	var out []string
	for k := range objs {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func byKind[T any](t *testing.T, objs map[string]*object, kind string) []T {
	t.Helper()
	var out []T
	for _, k := range kinds(objs) {
		if o := objs[k]; o.kind == kind && o.obj != nil {
			out = append(out, *o.obj.(*T))
		}
	}
	return out
}

// TestHelmLint runs helm's own linter over the default values and the
// all-features values.
func TestHelmLint(t *testing.T) {
	for _, file := range []string{"", allValuesFile} {
		l := lint.All(chartDir, valuesOf(t, file), releaseNS, false)
		for _, m := range l.Messages {
			if m.Severity >= support.WarningSev {
				t.Errorf("helm lint (values %q): %s", file, m)
			} else {
				t.Logf("helm lint (values %q): %s", file, m)
			}
		}
	}
}

// TestHelmDefaults: the default values render the agent alone, with no
// Secret (credentials come from existing Secrets only) and no optional part.
func TestHelmDefaults(t *testing.T) {
	objs := manifests(t, nil)
	want := []string{"ConfigMap/tenantvault", "Deployment/tenantvault", "Service/tenantvault", "ServiceAccount/tenantvault"}
	if got := kinds(objs); !reflect.DeepEqual(got, want) {
		t.Fatalf("default values render %v, want %v", got, want)
	}
	checkChart(t, objs, valuesOf(t, ""))
}

// TestHelmAllFeatures renders every optional part and checks how the parts
// fit together.
func TestHelmAllFeatures(t *testing.T) {
	vals := valuesOf(t, allValuesFile)
	objs := manifests(t, vals)
	for _, want := range []string{"ServiceMonitor/tenantvault", "PrometheusRule/tenantvault", "CronJob/tenantvault-drill",
		"Job/tenantvault-mass-restore", "ConfigMap/tenantvault-restore-tenants"} {
		if objs[want] == nil {
			t.Errorf("all-features values do not render %s (got %v)", want, kinds(objs))
		}
	}
	checkChart(t, objs, vals)
	// Replicas with capture need no warning: one captures, the others
	// stand by (TestTwoAgentsCaptureOneSource).
	if _, err := render(t, map[string]any{"agent": map[string]any{"replicas": 2, "config": map[string]any{
		"repository": "s3://b/p", "sources": []any{map[string]any{"name": "main", "capture": true}}}}}); err != nil {
		t.Errorf("render with replicas and capture: %v", err)
	}
	checkMonitoring(t, objs)
	checkDrill(t, objs)
	checkMassRestore(t, objs)
}

// TestHelmRejects: values the chart must refuse, with a message, and a
// typo the strict decoding must catch.
func TestHelmRejects(t *testing.T) {
	for name, vals := range map[string]map[string]any{
		"mass restore without tenants": {"massRestore": map[string]any{"enabled": true}},
		"at and snapshot":              {"massRestore": map[string]any{"enabled": true, "tenants": []any{"a"}, "at": "2026-11-28T10:15:00Z", "snapshot": "x"}},
		"bad ifExists":                 {"massRestore": map[string]any{"enabled": true, "tenants": []any{"a"}, "ifExists": "overwrite"}},
		"no repository":                {"drill": map[string]any{"enabled": true}, "agent": map[string]any{"config": map[string]any{"repository": ""}}},
		"misspelt value":               {"agent": map[string]any{"replica": 3}},
		"misspelt section":             {"serviceMonitors": map[string]any{"enabled": true}},
		"replicas as text":             {"agent": map[string]any{"replicas": "two"}},
	} {
		if _, err := render(t, vals); err == nil {
			t.Errorf("%s: rendered", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	if err := decodeStrict("apiVersion: apps/v1\nkind: Deployment\nspec:\n  replica: 2\n", &appsv1.Deployment{}); err == nil {
		t.Error("strict decoding accepts spec.replica")
	}
}

// checkChart checks what every rendering must hold: the agent's config
// passes the agent's own checks, the pods run as non-root with a read-only
// root file system and probes on the health endpoints, every reference
// resolves, and no Secret is rendered.
func checkChart(t *testing.T, objs map[string]*object, vals map[string]any) {
	t.Helper()
	for _, o := range objs {
		if o.kind == "Secret" {
			t.Errorf("%s renders a Secret: credentials must come from existing Secrets", o.source)
		}
		if ns, ok := dig(o.raw, "metadata", "namespace").(string); ok && ns != releaseNS {
			t.Errorf("%s/%s in namespace %s", o.kind, o.name, ns)
		}
	}
	deps := byKind[appsv1.Deployment](t, objs, "Deployment")
	if len(deps) != 1 {
		t.Fatalf("%d Deployments", len(deps))
	}
	d := deps[0]
	pod := d.Spec.Template
	sel, err := metav1.LabelSelectorAsMap(d.Spec.Selector)
	if err != nil || !subset(sel, pod.Labels) {
		t.Errorf("Deployment selector %v does not select its pods %v", sel, pod.Labels)
	}
	if want := dig(vals, "agent", "replicas"); want != nil && d.Spec.Replicas != nil && fmt.Sprint(*d.Spec.Replicas) != fmt.Sprint(want) {
		t.Errorf("replicas %d, values %v", *d.Spec.Replicas, want)
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("liveness probe %+v", c.LivenessProbe)
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("readiness probe %+v", c.ReadinessProbe)
	}
	if len(c.Ports) != 1 || c.LivenessProbe.HTTPGet.Port.String() != c.Ports[0].Name {
		t.Errorf("probe port %v, container ports %+v", c.LivenessProbe.HTTPGet.Port, c.Ports)
	}
	checkPodSecurity(t, "Deployment", pod.Spec)
	checkReferences(t, "Deployment", pod.Spec, objs)

	// The config the ConfigMap carries passes `agent --check`, with the
	// Secret's files and the signing key where the pod mounts them.
	cmName := ""
	for _, v := range pod.Spec.Volumes {
		if v.ConfigMap != nil {
			cmName = v.ConfigMap.Name
		}
	}
	cm := objs["ConfigMap/"+cmName]
	if cm == nil {
		t.Fatalf("the agent's ConfigMap %q is not rendered", cmName)
	}
	config := cm.obj.(*corev1.ConfigMap).Data["agent.yaml"]
	dir := t.TempDir()
	for _, m := range regexp.MustCompile(regexp.QuoteMeta(secretsMounted)+`/([\w.-]+)`).FindAllStringSubmatch(config, -1) {
		os.WriteFile(filepath.Join(dir, m[1]), []byte("postgres://backup@db.example:5432/app"), 0o600)
	}
	_, signing, _, _, err := vault.NewKeyPair("test")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "snapshot.key"), []byte(signing), 0o600)
	config = strings.NewReplacer(secretsMounted, dir, keysMounted, dir).Replace(config)
	cfg, err := agent.Load([]byte(config), func(string) string { return "" })
	if err != nil {
		t.Fatalf("the ConfigMap's agent.yaml does not pass --check:\n%v\n%s", err, config)
	}
	if want := fmt.Sprintf(":%d", c.Ports[0].ContainerPort); cfg.Listen != want {
		t.Errorf("listen %s, container port %s", cfg.Listen, want)
	}
	if g := pod.Spec.TerminationGracePeriodSeconds; g == nil || float64(*g) <= cfg.ShutdownTimeout.D.Seconds() {
		t.Errorf("terminationGracePeriodSeconds %v not above shutdown_timeout %s", g, cfg.ShutdownTimeout.D)
	}
	if strings.Contains(config, "://") && regexp.MustCompile(`://[^/@\s]+:[^/@\s]+@`).MatchString(config) {
		t.Error("the ConfigMap holds a URL with a password")
	}

	svcs := byKind[corev1.Service](t, objs, "Service")
	if len(svcs) != 1 || !subset(svcs[0].Spec.Selector, pod.Labels) || svcs[0].Spec.Ports[0].TargetPort.String() != c.Ports[0].Name {
		t.Errorf("the Service does not reach the agent's metrics port: %+v", svcs)
	}
	checkCLIArgs(t, "agent", c.Args)
}

func subset(sel, lbls map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if lbls[k] != v {
			return false
		}
	}
	return true
}

func checkPodSecurity(t *testing.T, what string, spec corev1.PodSpec) {
	t.Helper()
	sc := spec.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 {
		t.Errorf("%s: pod securityContext %+v does not run as non-root", what, sc)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("%s: mounts a service account token it never uses", what)
	}
	for _, c := range spec.Containers {
		s := c.SecurityContext
		if s == nil || s.ReadOnlyRootFilesystem == nil || !*s.ReadOnlyRootFilesystem || s.AllowPrivilegeEscalation == nil || *s.AllowPrivilegeEscalation ||
			s.Capabilities == nil || !reflect.DeepEqual(s.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("%s container %s: securityContext %+v", what, c.Name, s)
		}
		if !strings.HasPrefix(c.Image, "ghcr.io/tenantvault/tenantvault:") {
			t.Errorf("%s container %s: image %s", what, c.Name, c.Image)
		}
		// A read-only root needs a writable TMPDIR.
		var tmp string
		for _, e := range c.Env {
			if e.Name == "TMPDIR" {
				tmp = e.Value
			}
		}
		writable := false
		for _, m := range c.VolumeMounts {
			writable = writable || (m.MountPath == tmp && !m.ReadOnly)
		}
		if !writable {
			t.Errorf("%s container %s: TMPDIR %q is not a writable mount", what, c.Name, tmp)
		}
	}
}

// checkReferences: every mount names a volume, and every ConfigMap a pod
// uses is rendered by the chart (Secrets are the user's, by design).
func checkReferences(t *testing.T, what string, spec corev1.PodSpec, objs map[string]*object) {
	t.Helper()
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
	}
	for _, c := range spec.Containers {
		for _, m := range c.VolumeMounts {
			if _, ok := vols[m.Name]; !ok {
				t.Errorf("%s: mount %s names no volume", what, m.Name)
			}
		}
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && (e.ValueFrom.SecretKeyRef.Name == "" || e.ValueFrom.SecretKeyRef.Key == "") {
				t.Errorf("%s: env %s refers to no secret key", what, e.Name)
			}
		}
	}
	for _, v := range vols {
		if v.ConfigMap != nil && objs["ConfigMap/"+v.ConfigMap.Name] == nil && v.ConfigMap.Name != "" {
			t.Errorf("%s: volume %s uses ConfigMap %s, which the chart does not render", what, v.Name, v.ConfigMap.Name)
		}
		if v.Secret != nil && v.Secret.SecretName == "" {
			t.Errorf("%s: volume %s names no Secret", what, v.Name)
		}
	}
}

// Fields of the ServiceMonitor and its endpoints (Prometheus Operator CRD,
// monitoring.coreos.com/v1), to catch a misspelt one in the unstructured
// object.
var (
	serviceMonitorSpec = map[string]bool{"endpoints": true, "selector": true, "namespaceSelector": true, "jobLabel": true,
		"targetLabels": true, "podTargetLabels": true, "sampleLimit": true, "scrapeProtocols": true, "attachMetadata": true,
		"selectorMechanism": true, "labelLimit": true, "scrapeClass": true, "fallbackScrapeProtocol": true}
	serviceMonitorEndpoint = map[string]bool{"port": true, "targetPort": true, "path": true, "scheme": true, "params": true,
		"interval": true, "scrapeTimeout": true, "tlsConfig": true, "bearerTokenFile": true, "bearerTokenSecret": true,
		"authorization": true, "honorLabels": true, "honorTimestamps": true, "trackTimestampsStaleness": true, "basicAuth": true,
		"oauth2": true, "metricRelabelings": true, "relabelings": true, "proxyUrl": true, "followRedirects": true,
		"enableHttp2": true, "filterRunning": true}
)

func checkMonitoring(t *testing.T, objs map[string]*object) {
	t.Helper()
	svc := byKind[corev1.Service](t, objs, "Service")[0]
	sm := objs["ServiceMonitor/tenantvault"]
	spec, _ := dig(sm.raw, "spec").(map[string]any)
	for k := range spec {
		if !serviceMonitorSpec[k] {
			t.Errorf("ServiceMonitor: unknown field spec.%s", k)
		}
	}
	sel := map[string]string{}
	for k, v := range dig(spec, "selector", "matchLabels").(map[string]any) {
		sel[k] = fmt.Sprint(v)
	}
	if !subset(sel, svc.Labels) {
		t.Errorf("ServiceMonitor selector %v does not select the Service %v", sel, svc.Labels)
	}
	eps, _ := spec["endpoints"].([]any)
	if len(eps) == 0 {
		t.Fatal("ServiceMonitor without endpoints")
	}
	for _, ep := range eps {
		for k := range ep.(map[string]any) {
			if !serviceMonitorEndpoint[k] {
				t.Errorf("ServiceMonitor: unknown endpoint field %s", k)
			}
		}
		if dig(ep, "port") != svc.Spec.Ports[0].Name || dig(ep, "path") != "/metrics" {
			t.Errorf("ServiceMonitor endpoint %v, Service port %s", ep, svc.Spec.Ports[0].Name)
		}
	}
	if ns := dig(spec, "namespaceSelector", "matchNames"); !reflect.DeepEqual(ns, []any{releaseNS}) {
		t.Errorf("ServiceMonitor namespaceSelector %v", ns)
	}
	if dig(sm.raw, "metadata", "labels", "release") != "kube-prometheus-stack" {
		t.Errorf("ServiceMonitor labels %v lack serviceMonitor.labels", dig(sm.raw, "metadata", "labels"))
	}

	pr := objs["PrometheusRule/tenantvault"]
	doc, err := yaml.Marshal(pr.raw)
	if err != nil {
		t.Fatal(err)
	}
	got := ruleCRGroups(t, "chart PrometheusRule", doc)
	if plain := allRules(t); !reflect.DeepEqual(plain.Groups, got.Groups) {
		t.Errorf("the chart's PrometheusRule differs from %s:\n%s", rulesFile, groupsDiff(plain, got))
	}
}

// drillSelectors are the label matchers the drill alerts use on Job and
// CronJob names.
func drillSelectors(t *testing.T) map[string][]*labels.Matcher {
	out := map[string][]*labels.Matcher{}
	for _, g := range allRules(t).Groups {
		for _, r := range g.Rules {
			for _, s := range selectors(t, r.Alert, r.Expr) {
				for _, m := range s.matchers {
					if m.Name == "job_name" || m.Name == "cronjob" {
						out[m.Name] = append(out[m.Name], m)
					}
				}
			}
		}
	}
	if len(out["job_name"]) == 0 || len(out["cronjob"]) == 0 {
		t.Fatalf("the drill alerts select no job_name or cronjob: %v", out)
	}
	return out
}

func checkDrill(t *testing.T, objs map[string]*object) {
	t.Helper()
	cjs := byKind[batchv1.CronJob](t, objs, "CronJob")
	if len(cjs) != 1 {
		t.Fatalf("%d CronJobs", len(cjs))
	}
	cj := cjs[0]
	// The alerts must see this CronJob and the Jobs it creates (named
	// <cronjob>-<minutes since the epoch>).
	sels := drillSelectors(t)
	for label, name := range map[string]string{"cronjob": cj.Name, "job_name": cj.Name + "-29406330"} {
		for _, m := range sels[label] {
			if !m.Matches(name) {
				t.Errorf("drill alert matcher %s does not match %s %s", m, label, name)
			}
		}
	}
	if cj.Spec.ConcurrencyPolicy != batchv1.ForbidConcurrent || cj.Spec.JobTemplate.Spec.BackoffLimit == nil || *cj.Spec.JobTemplate.Spec.BackoffLimit != 0 {
		t.Errorf("drill CronJob: concurrency %s, backoffLimit %v", cj.Spec.ConcurrencyPolicy, cj.Spec.JobTemplate.Spec.BackoffLimit)
	}
	spec := cj.Spec.JobTemplate.Spec.Template.Spec
	checkPodSecurity(t, "CronJob", spec)
	checkReferences(t, "CronJob", spec, objs)
	c := spec.Containers[0]
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].SecretRef == nil || c.EnvFrom[0].SecretRef.Name == "" {
		t.Errorf("drill env from %+v, want the scratch server's Secret", c.EnvFrom)
	}
	checkCLIArgs(t, "drill", c.Args)
}

func checkMassRestore(t *testing.T, objs map[string]*object) {
	t.Helper()
	jobs := byKind[batchv1.Job](t, objs, "Job")
	if len(jobs) != 1 {
		t.Fatalf("%d Jobs", len(jobs))
	}
	j := jobs[0]
	if j.Spec.CompletionMode == nil || *j.Spec.CompletionMode != batchv1.IndexedCompletion || j.Spec.Completions == nil {
		t.Fatalf("mass restore Job is not Indexed: %+v", j.Spec)
	}
	spec := j.Spec.Template.Spec
	checkPodSecurity(t, "Job", spec)
	checkReferences(t, "Job", spec, objs)
	if spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("restart policy %s", spec.RestartPolicy)
	}
	c := spec.Containers[0]
	args := strings.Join(c.Args, " ")
	if want := fmt.Sprintf("--shard=$(JOB_COMPLETION_INDEX)/%d", *j.Spec.Completions); !strings.Contains(args, want) {
		t.Errorf("restore args %s lack %s", args, want)
	}
	for _, want := range []string{"--tenants-file=/etc/tenantvault/tenants/tenants.txt", "--at=2026-11-28T10:15:00Z", "--if-exists=replace", "--yes", "--identity=/etc/tenantvault/identity/identity.txt"} {
		if !strings.Contains(args, want) {
			t.Errorf("restore args %s lack %s", args, want)
		}
	}
	target := false
	for _, e := range c.Env {
		target = target || (e.Name == "TENANTVAULT_TARGET" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil)
	}
	if !target || strings.Contains(args, "--target") {
		t.Errorf("the restore target must come from a Secret through TENANTVAULT_TARGET, not the args: %s", args)
	}
	var tenants string
	for _, v := range spec.Volumes {
		if v.ConfigMap != nil {
			tenants = objs["ConfigMap/"+v.ConfigMap.Name].obj.(*corev1.ConfigMap).Data["tenants.txt"]
		}
	}
	if tenants != "acme\nglobex\ninitech\n" {
		t.Errorf("tenants.txt %q", tenants)
	}
	checkCLIArgs(t, "restore", c.Args)
}

var cli struct {
	once sync.Once
	path string
	err  error
}

// checkCLIArgs checks each --flag of a container's args against the help
// of the tenantvault command it runs, built from this repository.
func checkCLIArgs(t *testing.T, command string, args []string) {
	t.Helper()
	if len(args) == 0 || args[0] != command {
		t.Fatalf("args %v do not start with %s", args, command)
	}
	cli.once.Do(func() {
		dir, err := os.MkdirTemp("", "tenantvault-cli-")
		if err != nil {
			cli.err = err
			return
		}
		cli.path = filepath.Join(dir, "tenantvault")
		cmd := exec.Command("go", "build", "-o", cli.path, "./cmd/tenantvault")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			cli.err = fmt.Errorf("build the CLI: %v\n%s", err, out)
		}
	})
	if cli.err != nil {
		t.Fatal(cli.err)
	}
	help, err := exec.Command(cli.path, command, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("tenantvault %s --help: %v\n%s", command, err, help)
	}
	for _, a := range args[1:] {
		flag, _, _ := strings.Cut(a, "=")
		if strings.HasPrefix(flag, "--") && !regexp.MustCompile(`(?m)^\s+(-\w, )?`+regexp.QuoteMeta(flag)+`\b`).Match(help) {
			t.Errorf("tenantvault %s has no flag %s", command, flag)
		}
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if cli.path != "" {
		os.RemoveAll(filepath.Dir(cli.path))
	}
	os.Exit(code)
}
