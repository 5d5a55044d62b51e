package validate

import (
	"bytes"
	"crypto/md5"
	"encoding/binary"
	"fmt"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/smtp-exporter/smtp_exporter/examples/kubernetes/validate/internal/copies"
)

// Paths relative to this directory.
const (
	kubernetesDir  = ".."
	baseDir        = "../base"
	secretExample  = "../secret.example.yaml"
	shippedConfig  = "../../../smtp_exporter.yml"
	dockerfile     = "../../../Dockerfile"
	prometheusYAML = "../../prometheus/prometheus.yml"
	rulesFile      = "../../prometheus/smtp_exporter.rules.yml"
	repoRoot       = "../../.."

	namespace    = "monitoring"
	exporterPort = 9465
	// replicas is the StatefulSet's: each module has this many Probes,
	// one per shard.
	replicas = 2
)

// manifests is everything one kustomization produces, decoded into the API
// types.
type manifests struct {
	statefulSets    []*appsv1.StatefulSet
	services        []*corev1.Service
	configMaps      []*corev1.ConfigMap
	budgets         []*policyv1.PodDisruptionBudget
	probes          []*monitoringv1.Probe
	serviceMonitors []*monitoringv1.ServiceMonitor
	prometheusRules []*monitoringv1.PrometheusRule
}

// decodeStrict decodes one YAML document into obj, refusing unknown and
// duplicate fields: a misspelt or misplaced key in a manifest is an error
// here, where the API server would silently drop it.
func decodeStrict(t *testing.T, what string, data []byte, obj any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(data, obj); err != nil {
		t.Fatalf("%s does not decode strictly into %T: %v", what, obj, err)
	}
}

// build runs kustomize on dir as `kubectl apply -k` would and decodes every
// resource it produces.
func build(t *testing.T, dir string) *manifests {
	t.Helper()
	resMap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	m := &manifests{}
	for _, res := range resMap.Resources() {
		data, err := res.AsYAML()
		if err != nil {
			t.Fatalf("%s: rendering %s: %v", dir, res.CurId(), err)
		}
		m.add(t, fmt.Sprintf("%s: %s", dir, res.CurId()), res.GetApiVersion(), res.GetKind(), res.GetNamespace(), data)
	}
	return m
}

// add decodes one resource into m; what names it in errors.
func (m *manifests) add(t *testing.T, what, apiVersion, kind, ns string, data []byte) {
	t.Helper()
	if ns != namespace {
		t.Errorf("%s is in namespace %q, want %q", what, ns, namespace)
	}
	switch gvk := apiVersion + " " + kind; gvk {
	case "apps/v1 StatefulSet":
		obj := &appsv1.StatefulSet{}
		decodeStrict(t, what, data, obj)
		m.statefulSets = append(m.statefulSets, obj)
	case "v1 Service":
		obj := &corev1.Service{}
		decodeStrict(t, what, data, obj)
		m.services = append(m.services, obj)
	case "v1 ConfigMap":
		obj := &corev1.ConfigMap{}
		decodeStrict(t, what, data, obj)
		m.configMaps = append(m.configMaps, obj)
	case "policy/v1 PodDisruptionBudget":
		obj := &policyv1.PodDisruptionBudget{}
		decodeStrict(t, what, data, obj)
		m.budgets = append(m.budgets, obj)
	case "monitoring.coreos.com/v1 Probe":
		obj := &monitoringv1.Probe{}
		decodeStrict(t, what, data, obj)
		m.probes = append(m.probes, obj)
	case "monitoring.coreos.com/v1 ServiceMonitor":
		obj := &monitoringv1.ServiceMonitor{}
		decodeStrict(t, what, data, obj)
		m.serviceMonitors = append(m.serviceMonitors, obj)
	case "monitoring.coreos.com/v1 PrometheusRule":
		obj := &monitoringv1.PrometheusRule{}
		decodeStrict(t, what, data, obj)
		m.prometheusRules = append(m.prometheusRules, obj)
	default:
		t.Errorf("%s: unexpected resource (%s); teach this test about it", what, gvk)
	}
}

// counts says how many resources of each kind m holds.
func (m *manifests) counts() string {
	return fmt.Sprintf("%d StatefulSet, %d Service, %d ConfigMap, %d PodDisruptionBudget, %d Probe, %d ServiceMonitor, %d PrometheusRule",
		len(m.statefulSets), len(m.services), len(m.configMaps), len(m.budgets), len(m.probes), len(m.serviceMonitors), len(m.prometheusRules))
}

// only returns the single element of list, failing the test otherwise.
func only[T any](t *testing.T, what string, list []T) T {
	t.Helper()
	if len(list) != 1 {
		t.Fatalf("want exactly one %s, got %d", what, len(list))
	}
	return list[0]
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// exporterConfig is the part of smtp_exporter.yml these tests look at.
type exporterConfig struct {
	Modules map[string]struct {
		SMTP struct {
			Auth *struct {
				Username     string `json:"username"`
				PasswordFile string `json:"password_file"`
			} `json:"auth"`
			AllowedTargets []string `json:"allowed_targets"`
		} `json:"smtp"`
	} `json:"modules"`
}

func loadExporterConfig(t *testing.T, data []byte) exporterConfig {
	t.Helper()
	var cfg exporterConfig
	// Not strict: this is a partial view of the file. The exporter's own
	// tests validate the whole of it.
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatalf("parsing the exporter configuration: %v", err)
	}
	if len(cfg.Modules) == 0 {
		t.Fatal("the exporter configuration has no modules")
	}
	return cfg
}

func TestStrictDecodingRejectsUnknownAndDuplicateFields(t *testing.T) {
	for name, doc := range map[string]string{
		"misspelt field":  "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replica: 2}\n",
		"misplaced field": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {template: {spec: {readOnlyRootFilesystem: true}}}\n",
		"duplicate field": "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nmetadata: {name: y}\n",
	} {
		if err := yaml.UnmarshalStrict([]byte(doc), &appsv1.Deployment{}); err == nil {
			t.Errorf("%s: strict decoding accepted %q", name, doc)
		}
	}
}

func TestKustomizationsBuild(t *testing.T) {
	for _, tc := range []struct {
		dir                         string
		probes, operatorObjectsEach int
	}{
		{dir: baseDir},
		// One Probe per module and replica (shard).
		{dir: kubernetesDir, probes: replicas * len(loadExporterConfig(t, readFile(t, shippedConfig)).Modules), operatorObjectsEach: 1},
	} {
		counts := build(t, tc.dir).counts()
		want := fmt.Sprintf("1 StatefulSet, 1 Service, 1 ConfigMap, 1 PodDisruptionBudget, %d Probe, %d ServiceMonitor, %d PrometheusRule",
			tc.probes, tc.operatorObjectsEach, tc.operatorObjectsEach)
		if counts != want {
			t.Errorf("kustomize build %s: got %s, want %s", tc.dir, counts, want)
		}
	}
}

func exporterContainer(t *testing.T, d *appsv1.StatefulSet) corev1.Container {
	t.Helper()
	return only(t, "container in the StatefulSet", d.Spec.Template.Spec.Containers)
}

func TestStatefulSetIsHardened(t *testing.T) {
	checkStatefulSet(t, only(t, "StatefulSet", build(t, kubernetesDir).statefulSets), replicas)
}

// checkStatefulSet checks the number of replicas, the security settings,
// resources, port and health checks of the exporter's StatefulSet.
func checkStatefulSet(t *testing.T, d *appsv1.StatefulSet, replicas int32) {
	t.Helper()
	pod := d.Spec.Template.Spec
	c := exporterContainer(t, d)

	if d.Spec.Replicas == nil || *d.Spec.Replicas != replicas {
		t.Errorf("replicas = %v, want %d", d.Spec.Replicas, replicas)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the pod mounts a service account token it has no use for")
	}
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Error("pod securityContext.runAsNonRoot is not true")
	}
	if psc == nil || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Error("pod securityContext.runAsUser is not a non-root uid")
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod seccompProfile is not RuntimeDefault")
	}

	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("the container has no securityContext")
	}
	if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Error("container runAsNonRoot is not true")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("container readOnlyRootFilesystem is not true")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("container allowPrivilegeEscalation is not false")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("container is privileged")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("container capabilities = %+v, want drop [ALL] and nothing added", sc.Capabilities)
	}

	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := c.Resources.Requests[name]
		lim, hasLim := c.Resources.Limits[name]
		if !hasReq || !hasLim || req.IsZero() || lim.IsZero() {
			t.Errorf("%s: request %v and limit %v must both be set", name, req.String(), lim.String())
			continue
		}
		if req.Cmp(lim) > 0 {
			t.Errorf("%s: request %s is above the limit %s", name, req.String(), lim.String())
		}
	}
	if mem := c.Resources.Limits[corev1.ResourceMemory]; mem.Cmp(resource.MustParse("32Mi")) < 0 {
		t.Errorf("memory limit %s is too small for a Go process", mem.String())
	}

	port := only(t, "container port", c.Ports)
	if port.ContainerPort != exporterPort || port.Name != "http" {
		t.Errorf("container port = %s/%d, want http/%d", port.Name, port.ContainerPort, exporterPort)
	}
	for _, pc := range []struct {
		what  string
		probe *corev1.Probe
		path  string
	}{
		{"livenessProbe", c.LivenessProbe, "/-/healthy"},
		{"readinessProbe", c.ReadinessProbe, "/-/ready"},
	} {
		if pc.probe == nil || pc.probe.HTTPGet == nil {
			t.Errorf("%s is not an HTTP probe", pc.what)
			continue
		}
		get := pc.probe.HTTPGet
		if get.Path != pc.path {
			t.Errorf("%s path = %q, want %q", pc.what, get.Path, pc.path)
		}
		if resolved := resolvePort(c, get.Port.String()); resolved != exporterPort {
			t.Errorf("%s port %q resolves to %d, want %d", pc.what, get.Port.String(), resolved, exporterPort)
		}
	}
}

// resolvePort turns a port given by name or number into the number.
func resolvePort(c corev1.Container, port string) int32 {
	for _, p := range c.Ports {
		if p.Name == port || fmt.Sprint(p.ContainerPort) == port {
			return p.ContainerPort
		}
	}
	return 0
}

// TestConfigurationAndPasswordAreMounted follows the files the exporter
// reads from the image's entrypoint to the projected volume: the
// configuration from the generated ConfigMap, each password_file from the
// Secret.
func TestConfigurationAndPasswordAreMounted(t *testing.T) {
	m := build(t, kubernetesDir)
	secret := &corev1.Secret{}
	decodeStrict(t, secretExample, readFile(t, secretExample), secret)
	if secret.Namespace != namespace {
		t.Errorf("the example Secret is in namespace %q, want %q", secret.Namespace, namespace)
	}
	for key, value := range secret.StringData {
		if !strings.Contains(value, "REPLACE") {
			t.Errorf("the example Secret's %s is not an obvious placeholder: it must never look like a real password", key)
		}
	}
	var keys []string
	for key := range secret.StringData {
		keys = append(keys, key)
	}
	checkMounts(t, only(t, "StatefulSet", m.statefulSets), only(t, "ConfigMap", m.configMaps), secret.Name, keys)
}

// checkMounts follows the files the exporter reads from the image's
// entrypoint to the projected volume: the configuration from the ConfigMap
// cm, each password_file from the Secret secretName, which has the keys
// secretKeys. With no secretName, no Secret must be mounted, and the
// password files are not looked for.
func checkMounts(t *testing.T, d *appsv1.StatefulSet, cm *corev1.ConfigMap, secretName string, secretKeys []string) {
	t.Helper()
	c := exporterContainer(t, d)

	mount := only(t, "volume mount", c.VolumeMounts)
	if !mount.ReadOnly {
		t.Error("the configuration volume is mounted read-write")
	}
	// mounted maps each file in the mount directory to its source.
	mounted := map[string]string{}
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Name != mount.Name {
			continue
		}
		if v.Projected == nil {
			t.Fatalf("volume %s is not a projected volume of the ConfigMap and the Secret", v.Name)
		}
		for _, src := range v.Projected.Sources {
			switch {
			case src.ConfigMap != nil:
				if src.ConfigMap.Name != cm.Name {
					t.Errorf("the volume names ConfigMap %q; kustomize generated %q", src.ConfigMap.Name, cm.Name)
				}
				for _, item := range src.ConfigMap.Items {
					if _, ok := cm.Data[item.Key]; !ok {
						t.Errorf("ConfigMap %s has no key %q", cm.Name, item.Key)
					}
					mounted[path.Join(mount.MountPath, item.Path)] = "configmap"
				}
			case src.Secret != nil:
				if src.Secret.Name != secretName {
					t.Errorf("the volume names Secret %q, want %q", src.Secret.Name, secretName)
				}
				if src.Secret.Optional != nil && *src.Secret.Optional {
					t.Error("the Secret is optional: a missing password would only show as failed probes")
				}
				for _, item := range src.Secret.Items {
					if !slices.Contains(secretKeys, item.Key) {
						t.Errorf("the Secret %s has no key %q", secretName, item.Key)
					}
					mounted[path.Join(mount.MountPath, item.Path)] = "secret"
				}
				if len(src.Secret.Items) == 0 {
					// Every key, each as a file of its name.
					for _, key := range secretKeys {
						mounted[path.Join(mount.MountPath, key)] = "secret"
					}
				}
			}
		}
	}

	configFile := entrypointConfigFile(t)
	if mounted[configFile] != "configmap" {
		t.Errorf("the image reads %s, which the ConfigMap does not provide (mounted: %v)", configFile, mounted)
	}
	if secretName == "" {
		for file, from := range mounted {
			if from == "secret" {
				t.Errorf("%s is mounted from a Secret, but none was named", file)
			}
		}
		return
	}
	cfg := loadExporterConfig(t, []byte(cm.Data[path.Base(configFile)]))
	for name, mod := range cfg.Modules {
		if mod.SMTP.Auth == nil || mod.SMTP.Auth.PasswordFile == "" {
			continue
		}
		if mounted[mod.SMTP.Auth.PasswordFile] != "secret" {
			t.Errorf("module %s reads password_file %s, which the Secret does not provide (mounted: %v)",
				name, mod.SMTP.Auth.PasswordFile, mounted)
		}
	}
}

// entrypointConfigFile returns the --config.file of the Dockerfile's
// ENTRYPOINT, the path the container reads its configuration from.
func entrypointConfigFile(t *testing.T) string {
	t.Helper()
	match := regexp.MustCompile(`(?m)^ENTRYPOINT .*"--config\.file=([^"]+)"`).FindSubmatch(readFile(t, dockerfile))
	if match == nil {
		t.Fatalf("no --config.file in the ENTRYPOINT of %s", dockerfile)
	}
	return string(match[1])
}

// TestCopiesAreCurrent checks every copy of the shipped configuration and
// the alerting rules in the manifests and the chart against its source, as
// it is now.
func TestCopiesAreCurrent(t *testing.T) {
	for _, c := range copies.All() {
		want := c.Make(readFile(t, copies.Path(repoRoot, c.Source)))
		if got := readFile(t, copies.Path(repoRoot, c.Dest)); !bytes.Equal(got, want) {
			t.Errorf("%s is not the copy of %s as it is now; write the copies again:\n  %s", c.Dest, c.Source, copies.Command)
		}
	}
}

func TestConfigMapIsTheShippedConfiguration(t *testing.T) {
	shipped := readFile(t, shippedConfig)
	cm := only(t, "ConfigMap", build(t, baseDir).configMaps)
	if got := cm.Data["smtp_exporter.yml"]; got != string(shipped) {
		t.Errorf("ConfigMap %s does not hold the shipped configuration", cm.Name)
	}
}

func TestServiceAndBudgetSelectTheExporterPods(t *testing.T) {
	checkSelectors(t, build(t, kubernetesDir))
}

// checkSelectors checks that the StatefulSet, the headless Service and the
// PodDisruptionBudget, if there is one, select the exporter's pods.
func checkSelectors(t *testing.T, m *manifests) {
	t.Helper()
	d := only(t, "StatefulSet", m.statefulSets)
	podLabels := labels.Set(d.Spec.Template.Labels)
	c := exporterContainer(t, d)

	selector, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || !selector.Matches(podLabels) {
		t.Errorf("the StatefulSet's selector %v does not match its own pods (%v)", d.Spec.Selector, err)
	}

	svc := only(t, "Service", m.services)
	if len(svc.Spec.Selector) == 0 || !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) {
		t.Errorf("Service selector %v does not select the pods %v", svc.Spec.Selector, podLabels)
	}
	port := only(t, "Service port", svc.Spec.Ports)
	if port.Port != exporterPort || resolvePort(c, port.TargetPort.String()) != exporterPort {
		t.Errorf("Service port %d -> %s, want %d -> the container's %d", port.Port, port.TargetPort.String(), exporterPort, exporterPort)
	}
	// The pods' own DNS names, which the probe jobs address shard by
	// shard, come from a headless Service named in the StatefulSet.
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("Service %s has clusterIP %q; it must be headless (None) to give each replica a DNS name", svc.Name, svc.Spec.ClusterIP)
	}
	if d.Spec.ServiceName != svc.Name {
		t.Errorf("the StatefulSet's serviceName is %q, want the headless Service %q", d.Spec.ServiceName, svc.Name)
	}

	if len(m.budgets) == 0 {
		return
	}
	pdb := only(t, "PodDisruptionBudget", m.budgets)
	pdbSelector, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
	if err != nil || !pdbSelector.Matches(podLabels) {
		t.Errorf("the PodDisruptionBudget's selector %v does not select the pods (%v)", pdb.Spec.Selector, err)
	}
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() < 1 || int32(pdb.Spec.MinAvailable.IntValue()) >= *d.Spec.Replicas {
		t.Errorf("minAvailable %v must keep at least one pod and still let a node drain with %d replicas", pdb.Spec.MinAvailable, *d.Spec.Replicas)
	}
}

// replicaAddresses returns host:port of each replica of the StatefulSet
// through its headless Service, shard by shard.
func replicaAddresses(t *testing.T, m *manifests) []string {
	t.Helper()
	d := only(t, "StatefulSet", m.statefulSets)
	if d.Spec.Replicas == nil {
		t.Fatal("the StatefulSet sets no replicas")
	}
	var addrs []string
	for i := range int(*d.Spec.Replicas) {
		addrs = append(addrs, fmt.Sprintf("%s-%d.%s.%s.svc:%d", d.Name, i, d.Spec.ServiceName, namespace, exporterPort))
	}
	return addrs
}

// promJob is the part of a job of examples/prometheus/prometheus.yml these
// tests read.
type promJob struct {
	JobName       string              `json:"job_name"`
	Params        map[string][]string `json:"params"`
	StaticConfigs []struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	} `json:"static_configs"`
	RelabelConfigs []relabelRule `json:"relabel_configs"`
}

// relabelRule is a Prometheus relabel_config.
type relabelRule struct {
	SourceLabels []string `json:"source_labels"`
	Separator    *string  `json:"separator"`
	Regex        *string  `json:"regex"`
	TargetLabel  string   `json:"target_label"`
	Replacement  *string  `json:"replacement"`
	Modulus      uint64   `json:"modulus"`
	Action       string   `json:"action"`
}

func prometheusConfig(t *testing.T) []promJob {
	t.Helper()
	var cfg struct {
		ScrapeConfigs []promJob `json:"scrape_configs"`
	}
	if err := yaml.Unmarshal(readFile(t, prometheusYAML), &cfg); err != nil {
		t.Fatalf("%s: %v", prometheusYAML, err)
	}
	return cfg.ScrapeConfigs
}

// prometheusJobs maps each module to its job in examples/prometheus; the
// alerting rules and the Probes must agree on the job names.
func prometheusJobs(t *testing.T) map[string]promJob {
	t.Helper()
	jobs := map[string]promJob{}
	for _, sc := range prometheusConfig(t) {
		if modules := sc.Params["module"]; len(modules) == 1 {
			jobs[modules[0]] = sc
		}
	}
	return jobs
}

// probeRules turns a Probe's relabelings into relabel_configs.
func probeRules(p *monitoringv1.Probe) []relabelRule {
	var rules []relabelRule
	for _, rc := range p.Spec.Targets.StaticConfig.RelabelConfigs {
		r := relabelRule{
			Separator:   rc.Separator,
			TargetLabel: rc.TargetLabel,
			Replacement: rc.Replacement,
			Modulus:     uint64(rc.Modulus),
			Action:      rc.Action,
		}
		if rc.Regex != "" {
			r.Regex = &rc.Regex
		}
		for _, l := range rc.SourceLabels {
			r.SourceLabels = append(r.SourceLabels, string(l))
		}
		rules = append(rules, r)
	}
	return rules
}

// relabel applies rules to a target's labels as Prometheus does, for the
// actions the examples use (replace, keep, hashmod). It returns the labels
// and false when the target is dropped.
func relabel(t *testing.T, in map[string]string, rules []relabelRule) (map[string]string, bool) {
	t.Helper()
	out := map[string]string{}
	for k, v := range in {
		out[k] = v
	}
	for _, r := range rules {
		sep, re, repl := ";", "(.*)", "$1"
		if r.Separator != nil {
			sep = *r.Separator
		}
		if r.Regex != nil {
			re = *r.Regex
		}
		if r.Replacement != nil {
			repl = *r.Replacement
		}
		var values []string
		for _, l := range r.SourceLabels {
			values = append(values, out[l])
		}
		value := strings.Join(values, sep)
		rx, err := regexp.Compile("^(?:" + re + ")$")
		if err != nil {
			t.Fatalf("relabel regex %q: %v", re, err)
		}
		switch strings.ToLower(r.Action) {
		case "", "replace":
			match := rx.FindStringSubmatchIndex(value)
			if match == nil {
				continue
			}
			target := string(rx.ExpandString(nil, r.TargetLabel, value, match))
			res := string(rx.ExpandString(nil, repl, value, match))
			if res == "" {
				delete(out, target)
			} else {
				out[target] = res
			}
		case "keep":
			if !rx.MatchString(value) {
				return nil, false
			}
		case "hashmod":
			if r.Modulus == 0 {
				t.Fatalf("hashmod into %s without a modulus", r.TargetLabel)
			}
			// Prometheus: the last 8 bytes of the MD5, big-endian.
			sum := md5.Sum([]byte(value))
			out[r.TargetLabel] = strconv.FormatUint(binary.BigEndian.Uint64(sum[8:])%r.Modulus, 10)
		default:
			t.Fatalf("relabel action %q is not one this test knows", r.Action)
		}
	}
	return out, true
}

// TestRelabelMatchesPrometheus pins the relabel helper above to
// Prometheus' own results for hashmod (promtool check service-discovery on
// examples/prometheus gives the same shards).
func TestRelabelMatchesPrometheus(t *testing.T) {
	mod := func(n uint64) []relabelRule {
		return []relabelRule{{SourceLabels: []string{"k"}, Action: "hashmod", Modulus: n, TargetLabel: "s"}}
	}
	for _, tc := range []struct {
		key     string
		modulus uint64
		want    string
	}{
		// From Prometheus 2.42 (relabel.Process) on these keys.
		{"smtp_banner", 2, "1"}, {"smtp_starttls", 2, "0"}, {"probe", 2, "1"}, {"mx_posture", 3, "2"},
	} {
		got, _ := relabel(t, map[string]string{"k": tc.key}, mod(tc.modulus))
		if got["s"] != tc.want {
			t.Errorf("hashmod %q %% %d = %s, want %s", tc.key, tc.modulus, got["s"], tc.want)
		}
	}
}

// TestProbesShardEveryModule checks that each module has one Probe per
// replica, each sending to its own replica, and follows every target of
// every Probe through the operator's relabelings and the Probe's own: each
// target is kept by exactly one Probe of its module, every target of an
// account lands on one replica, and it is the replica the relabelling of
// examples/prometheus/prometheus.yml picks for it.
func TestProbesShardEveryModule(t *testing.T) {
	checkProbes(t, build(t, kubernetesDir), true)
}

// checkProbes checks m's Probes against the shipped configuration: one
// Probe per module and replica, each sending to its own replica, hashing
// modulo the number of replicas, every target kept by exactly one Probe of
// its module and every target of an account on one replica. With
// samePrometheusYAML (when the replicas are those of
// examples/prometheus/prometheus.yml), that replica must be the one it
// picks.
func checkProbes(t *testing.T, m *manifests, samePrometheusYAML bool) {
	t.Helper()
	replicaAddrs := replicaAddresses(t, m)
	cfg := loadExporterConfig(t, readFile(t, shippedConfig))
	jobs := prometheusJobs(t)

	byModule := map[string][]*monitoringv1.Probe{}
	for _, p := range m.probes {
		spec := p.Spec
		module, ok := cfg.Modules[spec.Module]
		if !ok {
			t.Errorf("Probe %s names module %q, which smtp_exporter.yml does not define", p.Name, spec.Module)
			continue
		}
		byModule[spec.Module] = append(byModule[spec.Module], p)
		if spec.ProberSpec.Path != "/probe" || !slices.Contains(replicaAddrs, spec.ProberSpec.URL) {
			t.Errorf("Probe %s sends to %s%s, want /probe of one replica of %v", p.Name, spec.ProberSpec.URL, spec.ProberSpec.Path, replicaAddrs)
		}
		if want := jobs[spec.Module].JobName; spec.JobName != want {
			t.Errorf("Probe %s has jobName %q; %s scrapes module %s as job %q", p.Name, spec.JobName, prometheusYAML, spec.Module, want)
		}
		static := spec.Targets.StaticConfig
		if static == nil || len(static.Targets) == 0 {
			t.Errorf("Probe %s has no static targets", p.Name)
			continue
		}
		if static.Labels["module"] != spec.Module {
			t.Errorf("Probe %s labels its targets module=%q, want %q", p.Name, static.Labels["module"], spec.Module)
		}
		// A module with allowed_targets refuses anything else before
		// connecting; every target here must be one it accepts.
		if allowed := module.SMTP.AllowedTargets; len(allowed) > 0 {
			for _, target := range static.Targets {
				if !allowedTarget(allowed, target) {
					t.Errorf("Probe %s targets %s, which module %s does not allow (allowed_targets: %v)", p.Name, target, spec.Module, allowed)
				}
			}
		}
		if spec.Interval == "" || spec.ScrapeTimeout == "" {
			t.Errorf("Probe %s sets no interval or scrapeTimeout", p.Name)
		}
		for _, r := range probeRules(p) {
			if strings.EqualFold(r.Action, "hashmod") && r.Modulus != uint64(len(replicaAddrs)) {
				t.Errorf("Probe %s hashes modulo %d, but the StatefulSet has %d replicas", p.Name, r.Modulus, len(replicaAddrs))
			}
		}
	}

	// replicaOf records where each account's targets go; accountOf the
	// account label of each username, which every module logging in with
	// it must share.
	replicaOf := map[string]string{}
	accountOf := map[string]string{}
	for name, module := range cfg.Modules {
		probes := byModule[name]
		if len(probes) != len(replicaAddrs) {
			t.Errorf("module %s has %d Probes, want one per replica (%d)", name, len(probes), len(replicaAddrs))
			continue
		}
		job, ok := jobs[name]
		if !ok {
			t.Errorf("module %s has no job in %s", name, prometheusYAML)
			continue
		}
		for _, p := range probes {
			if !slices.Equal(p.Spec.Targets.StaticConfig.Targets, probes[0].Spec.Targets.StaticConfig.Targets) ||
				p.Spec.Targets.StaticConfig.Labels["account"] != probes[0].Spec.Targets.StaticConfig.Labels["account"] {
				t.Errorf("Probes %s and %s of module %s list different targets or accounts", p.Name, probes[0].Name, name)
			}
		}
		account := probes[0].Spec.Targets.StaticConfig.Labels["account"]
		if auth := module.SMTP.Auth; auth != nil {
			if account == "" {
				t.Errorf("module %s logs in, but its Probes give its targets no account label to shard by", name)
			}
			if prev, seen := accountOf[auth.Username]; seen && prev != account {
				t.Errorf("modules logging in as %s label their targets account=%q and %q; one account, one label", auth.Username, prev, account)
			}
			accountOf[auth.Username] = account
		}
		for _, sc := range job.StaticConfigs {
			if sc.Labels["account"] != account {
				t.Errorf("module %s: %s labels its targets account=%q, the Probes %q", name, prometheusYAML, sc.Labels["account"], account)
			}
		}

		for _, target := range probes[0].Spec.Targets.StaticConfig.Targets {
			var kept []string
			for _, p := range probes {
				// What the operator generates before a Probe's own
				// relabelings: the static labels, the module parameter, the
				// target as ?target= and instance, the prober as address.
				labels := map[string]string{
					"__address__":    p.Spec.ProberSpec.URL,
					"__param_module": p.Spec.Module,
					"__param_target": target,
					"instance":       target,
					"job":            p.Spec.JobName,
					"namespace":      p.Namespace,
				}
				for k, v := range p.Spec.Targets.StaticConfig.Labels {
					labels[k] = v
				}
				if out, keep := relabel(t, labels, probeRules(p)); keep {
					kept = append(kept, out["__address__"])
				}
			}
			if len(kept) != 1 {
				t.Errorf("module %s, target %s: kept by %d Probes (replicas %v), want exactly one", name, target, len(kept), kept)
				continue
			}
			// The same target through examples/prometheus/prometheus.yml.
			labels := map[string]string{"__address__": target, "__param_module": name}
			if account != "" {
				labels["account"] = account
			}
			out, keep := relabel(t, labels, job.RelabelConfigs)
			if samePrometheusYAML && (!keep || out["__address__"] != kept[0]) {
				t.Errorf("module %s, target %s: the Probes send it to %s, %s to %q", name, target, kept[0], prometheusYAML, out["__address__"])
			}
			key := "module " + name
			if account != "" {
				key = "account " + account
			}
			if prev, seen := replicaOf[key]; seen && prev != kept[0] {
				t.Errorf("%s: targets go to %s and to %s; every target of an account must go to one replica", key, prev, kept[0])
			}
			replicaOf[key] = kept[0]
		}
	}
	t.Logf("shards: %v", replicaOf)
}

// TestPrometheusScrapesEveryReplica checks that the exporter's own job in
// examples/prometheus lists every replica, so that a replica that is down
// shows as up == 0 there.
func TestPrometheusScrapesEveryReplica(t *testing.T) {
	want := replicaAddresses(t, build(t, kubernetesDir))
	for _, sc := range prometheusConfig(t) {
		if sc.JobName != "smtp_exporter" {
			continue
		}
		var got []string
		for _, s := range sc.StaticConfigs {
			got = append(got, s.Targets...)
		}
		if !slices.Equal(got, want) {
			t.Errorf("job smtp_exporter scrapes %v, want every replica %v", got, want)
		}
		return
	}
	t.Errorf("%s has no job smtp_exporter", prometheusYAML)
}

func TestServiceMonitorScrapesTheExporter(t *testing.T) {
	checkServiceMonitor(t, build(t, kubernetesDir))
}

// checkServiceMonitor checks that the ServiceMonitor scrapes /metrics of
// the headless Service's endpoints, every replica, as job smtp_exporter.
func checkServiceMonitor(t *testing.T, m *manifests) {
	t.Helper()
	svc := only(t, "Service", m.services)
	sm := only(t, "ServiceMonitor", m.serviceMonitors)

	selector, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil || !selector.Matches(labels.Set(svc.Labels)) {
		t.Errorf("ServiceMonitor selector %v does not select Service %s (labels %v): %v", sm.Spec.Selector, svc.Name, svc.Labels, err)
	}
	ep := only(t, "ServiceMonitor endpoint", sm.Spec.Endpoints)
	if ep.Port != only(t, "Service port", svc.Spec.Ports).Name || ep.Path != "/metrics" {
		t.Errorf("endpoint scrapes port %q path %q, want the Service's port and /metrics", ep.Port, ep.Path)
	}
	setsJob := false
	for _, r := range ep.RelabelConfigs {
		if r.TargetLabel == "job" && r.Replacement != nil && *r.Replacement == "smtp_exporter" {
			setsJob = true
		}
	}
	if !setsJob {
		t.Error("the ServiceMonitor does not set job=smtp_exporter, which SMTPExporterConfigReloadFailed and the dashboard expect")
	}
}

// allowedTarget reports whether allowed_targets admits target (host:port),
// for the entries the examples use: "*", "*:port", host and host:port.
func allowedTarget(allowed []string, target string) bool {
	host, port, _ := strings.Cut(target, ":")
	for _, a := range allowed {
		if a == "*" || a == target || a == host || a == "*:"+port {
			return true
		}
	}
	return false
}

func TestPrometheusRuleIsTheRulesFile(t *testing.T) {
	checkPrometheusRule(t, only(t, "PrometheusRule", build(t, kubernetesDir).prometheusRules))
}

// checkPrometheusRule checks that pr holds the groups of
// examples/prometheus/smtp_exporter.rules.yml as they are now, compared
// after decoding both, so that a difference in how they are written does
// not matter but one in what they say does.
func checkPrometheusRule(t *testing.T, pr *monitoringv1.PrometheusRule) {
	t.Helper()
	var file struct {
		Groups []monitoringv1.RuleGroup `json:"groups"`
	}
	decodeStrict(t, rulesFile, readFile(t, rulesFile), &file)
	if len(file.Groups) == 0 {
		t.Fatalf("%s has no groups", rulesFile)
	}
	got, err := yaml.Marshal(pr.Spec.Groups)
	if err != nil {
		t.Fatal(err)
	}
	want, err := yaml.Marshal(file.Groups)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("PrometheusRule %s does not hold the groups of %s; write the copies again:\n  %s", pr.Name, rulesFile, copies.Command)
	}
}
