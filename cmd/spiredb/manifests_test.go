package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/spiredb/spiredb/schedule"
)

// prometheusRule is the part of monitoring.coreos.com/v1 PrometheusRule the
// manifests use (decoded strictly: a typo fails).
type prometheusRule struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for,omitempty"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

// checkCommand finds the spiredb command of a container's args and checks
// every flag it passes exists on that command.
func checkCommand(t *testing.T, where string, args []string) {
	t.Helper()
	root := newRootCmd(&bytes.Buffer{}, &bytes.Buffer{})
	cmd, rest, err := root.Find(args)
	require.NoError(t, err, "%s: %v", where, args)
	require.NotEqual(t, root, cmd, "%s: no spiredb command in %v", where, args)
	require.True(t, cmd.Runnable(), "%s: %q is a command group", where, cmd.CommandPath())
	for _, a := range rest {
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		f := cmd.Flags().Lookup(name)
		if f == nil {
			f = cmd.InheritedFlags().Lookup(name)
		}
		assert.NotNil(t, f, "%s: %s has no flag --%s", where, cmd.CommandPath(), name)
	}
}

func checkPod(t *testing.T, where string, spec corev1.PodSpec) {
	t.Helper()
	require.NotNil(t, spec.SecurityContext, where)
	assert.True(t, spec.SecurityContext.RunAsNonRoot != nil && *spec.SecurityContext.RunAsNonRoot, "%s: runAsNonRoot", where)
	for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
		checkCommand(t, where+"/"+c.Name, c.Args)
		require.NotNil(t, c.SecurityContext, where)
		assert.True(t, c.SecurityContext.ReadOnlyRootFilesystem != nil && *c.SecurityContext.ReadOnlyRootFilesystem, "%s: read-only root", where)
		assert.True(t, c.SecurityContext.AllowPrivilegeEscalation != nil && !*c.SecurityContext.AllowPrivilegeEscalation, where)
		// credentials from a Secret, never in the manifest
		require.Len(t, c.EnvFrom, 1, where)
		require.NotNil(t, c.EnvFrom[0].SecretRef, where)
		for _, e := range c.Env {
			assert.NotContains(t, strings.ToLower(e.Name), "password", where)
			assert.NotContains(t, e.Name, "SECRET", where)
			assert.NotEqual(t, "SPIREDB_DSN", e.Name, "%s: the DSN comes from the Secret", where)
		}
	}
}

// Every manifest decodes strictly into the Kubernetes API types, and every
// spiredb command and flag it uses exists.
func TestManifests(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "deploy", "kubernetes", "*.yaml"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	kinds := map[string]int{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		for i, doc := range bytes.Split(b, []byte("\n---\n")) {
			where := filepath.Base(f) + "#" + string(rune('0'+i))
			var meta struct {
				Kind string `json:"kind"`
			}
			require.NoError(t, yaml.Unmarshal(doc, &meta), where)
			kinds[meta.Kind]++
			switch meta.Kind {
			case "CronJob":
				var cj batchv1.CronJob
				require.NoError(t, yaml.UnmarshalStrict(doc, &cj), where)
				assert.Equal(t, batchv1.ForbidConcurrent, cj.Spec.ConcurrencyPolicy, where)
				assert.NotNil(t, cj.Spec.StartingDeadlineSeconds, where)
				assert.NotNil(t, cj.Spec.JobTemplate.Spec.BackoffLimit, where)
				assert.NotNil(t, cj.Spec.JobTemplate.Spec.ActiveDeadlineSeconds, where)
				checkPod(t, where, cj.Spec.JobTemplate.Spec.Template.Spec)
			case "Job":
				var j batchv1.Job
				require.NoError(t, yaml.UnmarshalStrict(doc, &j), where)
				assert.NotNil(t, j.Spec.BackoffLimit, where)
				checkPod(t, where, j.Spec.Template.Spec)
			case "Deployment":
				var d appsv1.Deployment
				require.NoError(t, yaml.UnmarshalStrict(doc, &d), where)
				checkPod(t, where, d.Spec.Template.Spec)
			case "ConfigMap":
				var cm corev1.ConfigMap
				require.NoError(t, yaml.UnmarshalStrict(doc, &cm), where)
				for name, content := range cm.Data {
					cfg, err := schedule.ParseConfig(name, []byte(content))
					require.NoError(t, err, "%s: the schedule file is valid", where)
					for _, j := range cfg.Jobs {
						checkCommand(t, where+"/"+j.Name, append(strings.Fields(j.Command), j.Args...))
					}
				}
			case "Service":
				var s corev1.Service
				require.NoError(t, yaml.UnmarshalStrict(doc, &s), where)
			case "PrometheusRule":
				var r prometheusRule
				require.NoError(t, yaml.UnmarshalStrict(doc, &r), where)
				assert.Equal(t, "monitoring.coreos.com/v1", r.APIVersion)
				require.NotEmpty(t, r.Spec.Groups)
			default:
				t.Errorf("%s: unexpected kind %q", where, meta.Kind)
			}
		}
	}
	for _, k := range []string{"CronJob", "Job", "Deployment", "ConfigMap", "Service", "PrometheusRule"} {
		assert.Positive(t, kinds[k], "no %s among the manifests", k)
	}
	assert.Equal(t, 4, kinds["CronJob"], "backup, verify, prune, views refresh")
}

// A strict decode catches a typo, so the test above can fail.
func TestManifestTypoFails(t *testing.T) {
	var cj batchv1.CronJob
	err := yaml.UnmarshalStrict([]byte("apiVersion: batch/v1\nkind: CronJob\nspec:\n  concurrencyPolicyy: Forbid\n"), &cj)
	assert.Error(t, err)
	root := newRootCmd(&bytes.Buffer{}, &bytes.Buffer{})
	cmd, _, err := root.Find([]string{"backup", "run"})
	require.NoError(t, err)
	assert.Nil(t, cmd.Flags().Lookup("compression"), "the flag check would catch --compression")
}
