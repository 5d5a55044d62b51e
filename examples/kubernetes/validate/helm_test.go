package validate

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/kustomize/kyaml/kio"
	"sigs.k8s.io/yaml"
)

// Paths relative to this directory.
const (
	chartDir = "../../../charts/smtp-exporter"
	// allOnValues turns every optional part of the chart on, with three
	// replicas.
	allOnValues = chartDir + "/ci/all-on-values.yaml"
	versionFile = "../../../VERSION"
)

// helmBinary returns the helm to run: $HELM, else helm on the PATH. Without
// either the test skips, except in CI (CI=true), where the chart must be
// checked.
func helmBinary(t *testing.T) string {
	t.Helper()
	if h := os.Getenv("HELM"); h != "" {
		return h
	}
	if h, err := exec.LookPath("helm"); err == nil {
		return h
	}
	const how = "set HELM to a helm binary or put helm on the PATH, e.g.\n" +
		"  GOBIN=/tmp/helm go install helm.sh/helm/v3/cmd/helm@v3.22.0 && export HELM=/tmp/helm/helm"
	if os.Getenv("CI") == "true" {
		t.Fatal("helm not found, and CI must check the chart: " + how)
	}
	t.Skip("helm not found, so the chart is not checked: " + how)
	return ""
}

// helmTemplate renders the chart as release in namespace monitoring with
// the given extra arguments (values files, --set) and decodes every
// resource strictly.
func helmTemplate(t *testing.T, release string, args ...string) *manifests {
	t.Helper()
	out := runHelm(t, append([]string{"template", release, chartDir, "--namespace", namespace}, args...)...)
	nodes, err := kio.FromBytes(out)
	if err != nil {
		t.Fatalf("helm template %s: splitting the output: %v", strings.Join(args, " "), err)
	}
	m := &manifests{}
	for _, n := range nodes {
		data, err := n.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		what := fmt.Sprintf("helm template %s: %s %s", strings.Join(args, " "), n.GetKind(), n.GetName())
		m.add(t, what, n.GetApiVersion(), n.GetKind(), n.GetNamespace(), data)
	}
	return m
}

func runHelm(t *testing.T, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(helmBinary(t), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// helmFails runs helm template with args and returns its error output,
// failing the test if helm succeeds.
func helmFails(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(helmBinary(t), append([]string{"template", "smtp-exporter", chartDir, "--namespace", namespace}, args...)...)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("helm template %s succeeded, want an error", strings.Join(args, " "))
	}
	return string(out)
}

// chartMeta reads Chart.yaml.
func chartMeta(t *testing.T) (version, appVersion string) {
	t.Helper()
	var c struct {
		Version    string `json:"version"`
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(readFile(t, filepath.Join(chartDir, "Chart.yaml")), &c); err != nil {
		t.Fatal(err)
	}
	return c.Version, c.AppVersion
}

// TestImagesAreTheExportersVersion checks that the chart's appVersion, which
// its image tag defaults to, and the kustomize base's image tag are the
// VERSION file's.
func TestImagesAreTheExportersVersion(t *testing.T) {
	version := strings.TrimSpace(string(readFile(t, versionFile)))
	if _, appVersion := chartMeta(t); appVersion != version {
		t.Errorf("Chart.yaml has appVersion %q, VERSION says %q: the image tag defaults to appVersion", appVersion, version)
	}
	image := exporterContainer(t, only(t, "StatefulSet", build(t, baseDir).statefulSets)).Image
	if !strings.HasSuffix(image, ":"+version) {
		t.Errorf("the kustomize base runs image %s, VERSION says %s: set newTag in %s/kustomization.yaml", image, version, baseDir)
	}
}

// TestChartDefaults renders the chart as it comes: the exporter with the
// shipped configuration and no Prometheus Operator objects, set up like the
// kustomize base.
func TestChartDefaults(t *testing.T) {
	m := helmTemplate(t, "smtp-exporter")
	want := "1 StatefulSet, 1 Service, 1 ConfigMap, 1 PodDisruptionBudget, 0 Probe, 0 ServiceMonitor, 0 PrometheusRule"
	if got := m.counts(); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	d := only(t, "StatefulSet", m.statefulSets)
	checkStatefulSet(t, d, replicas)
	checkSelectors(t, m)
	// The release named after the chart names its objects as the kustomize
	// base does, and so the replicas as examples/prometheus/prometheus.yml
	// addresses them.
	if got, want := replicaAddresses(t, m), replicaAddresses(t, build(t, baseDir)); !slices.Equal(got, want) {
		t.Errorf("the replicas are %v, the kustomize base's %v", got, want)
	}

	cm := only(t, "ConfigMap", m.configMaps)
	config := cm.Data["smtp_exporter.yml"]
	if config != string(readFile(t, shippedConfig)) {
		t.Errorf("ConfigMap %s does not hold the shipped configuration", cm.Name)
	}
	sum := sha256.Sum256([]byte(config))
	if got := d.Spec.Template.Annotations["checksum/config"]; got != hex.EncodeToString(sum[:]) {
		t.Errorf("checksum/config is %q, want the SHA-256 of the configuration, so that a change rolls the pods", got)
	}
	// No Secret named: the configuration alone.
	checkMounts(t, d, cm, "", nil)

	_, appVersion := chartMeta(t)
	if image := exporterContainer(t, d).Image; !strings.HasSuffix(image, ":"+appVersion) {
		t.Errorf("image %s is not tagged with the chart's appVersion %s", image, appVersion)
	}
}

// TestChartEverythingOn renders the chart with ci/all-on-values.yaml: three
// replicas, an existing Secret, Probes for the shipped modules,
// ServiceMonitor and PrometheusRule, each labelled for kube-prometheus-stack.
func TestChartEverythingOn(t *testing.T) {
	m := helmTemplate(t, "mail", "--values", allOnValues)
	const replicas = 3
	modules := len(loadExporterConfig(t, readFile(t, shippedConfig)).Modules)
	want := fmt.Sprintf("1 StatefulSet, 1 Service, 1 ConfigMap, 1 PodDisruptionBudget, %d Probe, 1 ServiceMonitor, 1 PrometheusRule", replicas*modules)
	if got := m.counts(); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	d := only(t, "StatefulSet", m.statefulSets)
	checkStatefulSet(t, d, replicas)
	checkSelectors(t, m)
	// Modulus 3: the replicas are not those of prometheus.yml.
	checkProbes(t, m, false)
	checkServiceMonitor(t, m)
	checkPrometheusRule(t, only(t, "PrometheusRule", m.prometheusRules))
	checkMounts(t, d, only(t, "ConfigMap", m.configMaps), "smtp-exporter-credentials", []string{"probe.pass"})

	// kube-prometheus-stack finds them by its release label.
	var selected []metav1.ObjectMeta
	for _, p := range m.probes {
		selected = append(selected, p.ObjectMeta)
	}
	selected = append(selected, m.serviceMonitors[0].ObjectMeta, m.prometheusRules[0].ObjectMeta)
	for _, o := range selected {
		if o.Labels["release"] != "kube-prometheus-stack" {
			t.Errorf("%s has labels %v, without the release label of the values", o.Name, o.Labels)
		}
	}
}

// TestChartShardsFollowReplicas renders the Probes for several numbers of
// replicas: each time one Probe per module and replica, hashing modulo the
// number of replicas.
func TestChartShardsFollowReplicas(t *testing.T) {
	for _, n := range []int{1, 2, 5} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			m := helmTemplate(t, "smtp-exporter", "--values", allOnValues, "--set", fmt.Sprintf("replicas=%d", n))
			checkStatefulSet(t, only(t, "StatefulSet", m.statefulSets), int32(n))
			// With 2 replicas, named as in the kustomize base, the Probes
			// pick the replica prometheus.yml picks.
			checkProbes(t, m, n == 2)
			if n == 1 && len(m.budgets) != 0 {
				t.Error("with one replica a PodDisruptionBudget would block every drain")
			}
			checkSelectors(t, m)
		})
	}
}

// TestChartConfiguration gives the configuration as a map, as a string and
// as an existing ConfigMap.
func TestChartConfiguration(t *testing.T) {
	const module = "modules:\n  smtp_banner:\n    timeout: 5s\n    smtp:\n      tls: none\n      port: 25\n"
	dir := t.TempDir()
	asMap := filepath.Join(dir, "map.yaml")
	asString := filepath.Join(dir, "string.yaml")
	if err := os.WriteFile(asMap, []byte("config:\n"+indent(module, "  ")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(asString, []byte("config: |\n"+indent(module, "  ")), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, values := range []string{asMap, asString} {
		m := helmTemplate(t, "smtp-exporter", "--values", values)
		cm := only(t, "ConfigMap", m.configMaps)
		var got, want any
		if err := yaml.Unmarshal([]byte(cm.Data["smtp_exporter.yml"]), &got); err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal([]byte(module), &want); err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: the ConfigMap holds %q, want %q", filepath.Base(values), cm.Data["smtp_exporter.yml"], module)
		}
		checkMounts(t, only(t, "StatefulSet", m.statefulSets), cm, "", nil)
	}

	m := helmTemplate(t, "smtp-exporter", "--set", "existingConfigMap=mine", "--set", "credentials.existingSecret=secrets")
	if len(m.configMaps) != 0 {
		t.Errorf("with existingConfigMap the chart renders %d ConfigMaps of its own", len(m.configMaps))
	}
	d := only(t, "StatefulSet", m.statefulSets)
	// Every key of the Secret is mounted: probe.pass among them.
	checkMounts(t, d, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "mine"},
		Data:       map[string]string{"smtp_exporter.yml": string(readFile(t, shippedConfig))},
	}, "secrets", []string{"probe.pass"})
}

// TestChartRefusesWhatCannotWork checks that helm stops with a reason
// instead of rendering Probes that cannot work or ignoring a misspelt value.
func TestChartRefusesWhatCannotWork(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--set", "probes.enabled=true"}, "probes.enabled needs probes.modules"},
		{[]string{"--set", "probes.enabled=true", "--set", "probes.modules[0].module=smtp_banner"}, "module smtp_banner has no targets"},
		{[]string{"--set", "probes.enabled=true", "--set", "probes.modules[0].module=smtp_banner", "--set", "probes.modules[0].targets[0]=mx:25",
			"--set", "probes.modules[0].jobName=banner"}, `must start with smtp_`},
		// values.schema.json: a misspelt value would leave its default in
		// force silently.
		{[]string{"--set", "replicas=0"}, "/replicas': minimum"},
		{[]string{"--set", "replica=3"}, "additional properties 'replica' not allowed"},
		{[]string{"--set", "probes.serviceMonitor.enabled=true"}, "additional properties 'serviceMonitor' not allowed"},
	} {
		if out := helmFails(t, tc.args...); !strings.Contains(out, tc.want) {
			t.Errorf("helm template %s: %s\nwant an error saying %q", strings.Join(tc.args, " "), out, tc.want)
		}
	}
}

func indent(s, prefix string) string {
	lines := strings.SplitAfter(s, "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = prefix + l
		}
	}
	return strings.Join(lines, "")
}
