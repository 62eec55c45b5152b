package tools

import (
	"path/filepath"
	"testing"

	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsyaml "sigs.k8s.io/yaml"
)

// TestKubernetesManifests decodes every manifest of deploy/kubernetes
// strictly into its API type, as the chart's are, and checks that the drill
// alerts see the plain CronJob too.
func TestKubernetesManifests(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(root, "deploy/kubernetes/*.yaml"))
	if err != nil || len(files) < 4 {
		t.Fatalf("manifests %v, %v", files, err)
	}
	seen := map[string]bool{}
	for _, f := range files {
		rel, _ := filepath.Rel(root, f)
		docs := releaseutil.SplitManifests(string(read(t, rel)))
		for _, k := range sortedKeys(docs) {
			doc := docs[k]
			var tm metav1.TypeMeta
			if err := sigsyaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Fatalf("%s: %v", rel, err)
			}
			var typed any
			switch tm.APIVersion + " " + tm.Kind {
			case "v1 ConfigMap":
				typed = &corev1.ConfigMap{}
			case "v1 Secret":
				typed = &corev1.Secret{}
			case "v1 Service":
				typed = &corev1.Service{}
			case "apps/v1 Deployment":
				typed = &appsv1.Deployment{}
			case "batch/v1 CronJob":
				typed = &batchv1.CronJob{}
			case "batch/v1 Job":
				typed = &batchv1.Job{}
			case "monitoring.coreos.com/v1 PrometheusRule":
				continue // TestPrometheusRuleMatchesRulesFile
			default:
				t.Errorf("%s: unexpected %s %s", rel, tm.APIVersion, tm.Kind)
				continue
			}
			if err := decodeStrict(doc, typed); err != nil {
				t.Errorf("%s: %s does not decode strictly: %v", rel, tm.Kind, err)
				continue
			}
			seen[tm.Kind] = true
			if cj, ok := typed.(*batchv1.CronJob); ok {
				for label, name := range map[string]string{"cronjob": cj.Name, "job_name": cj.Name + "-29406330"} {
					for _, m := range drillSelectors(t)[label] {
						if !m.Matches(name) {
							t.Errorf("%s: drill alert matcher %s does not match %s %s", rel, m, label, name)
						}
					}
				}
			}
		}
	}
	for _, k := range []string{"ConfigMap", "Secret", "Service", "Deployment", "CronJob", "Job"} {
		if !seen[k] {
			t.Errorf("deploy/kubernetes has no %s", k)
		}
	}
}
