//go:build linux

package e2e

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// k8sObject is the part of a Kubernetes object the manifest test reads.
type k8sObject struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		// Service
		ClusterIP string            `json:"clusterIP"`
		Selector  map[string]string `json:"selector"`
		Ports     []struct {
			Port       int `json:"port"`
			TargetPort int `json:"targetPort"`
		} `json:"ports"`
		// Job
		CompletionMode string `json:"completionMode"`
		Completions    int    `json:"completions"`
		Parallelism    int    `json:"parallelism"`
		Template       struct {
			Metadata struct {
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
			Spec struct {
				Subdomain     string         `json:"subdomain"`
				RestartPolicy string         `json:"restartPolicy"`
				Containers    []k8sContainer `json:"containers"`
				Volumes       []struct {
					Name string `json:"name"`
				} `json:"volumes"`
			} `json:"spec"`
		} `json:"template"`
	} `json:"spec"`
}

// k8sContainer is the part of a container the manifest test reads.
type k8sContainer struct {
	Command []string `json:"command"`
	Env     []struct {
		Name      string          `json:"name"`
		Value     string          `json:"value"`
		ValueFrom json.RawMessage `json:"valueFrom"`
	} `json:"env"`
	Ports []struct {
		ContainerPort int `json:"containerPort"`
	} `json:"ports"`
	VolumeMounts []struct {
		Name      string `json:"name"`
		MountPath string `json:"mountPath"`
	} `json:"volumeMounts"`
}

// mountOf is the mount path of c's volume name.
func (c k8sContainer) mountOf(name string) string {
	for _, m := range c.VolumeMounts {
		if m.Name == name {
			return m.MountPath
		}
	}
	return ""
}

// TestK8sManifest parses scripts/k8s's indexed Job and headless Service
// and checks that they fit together and with the binaries: one pod per
// worker plus the coordinator's (index 0), the join address is index 0's
// DNS name under the service, the ports agree, the token comes from a
// Secret, every mount has its volume; and the container's command, run by
// sh with stand-in binaries, starts `coordinator serve` at index 0 and
// `worker --join` with its own certificate elsewhere, with flags the real
// binaries accept and the file names `coordinator certs` writes.
func TestK8sManifest(t *testing.T) {
	b, err := os.ReadFile("../scripts/k8s/moetrain-job.json")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Kind  string      `json:"kind"`
		Items []k8sObject `json:"items"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatalf("moetrain-job.json: %v", err)
	}
	var svc, job *k8sObject
	for i := range list.Items {
		switch o := &list.Items[i]; o.APIVersion + " " + o.Kind {
		case "v1 Service":
			svc = o
		case "batch/v1 Job":
			job = o
		default:
			t.Errorf("unexpected object %s %s", o.APIVersion, o.Kind)
		}
	}
	if list.Kind != "List" || svc == nil || job == nil {
		t.Fatalf("want a List of a v1 Service and a batch/v1 Job; have %s of %d items", list.Kind, len(list.Items))
	}
	pod := job.Spec.Template.Spec
	if svc.Spec.ClusterIP != "None" || pod.Subdomain != svc.Metadata.Name {
		t.Errorf("service %q (clusterIP %q) must be headless and the pods' subdomain (%q)", svc.Metadata.Name, svc.Spec.ClusterIP, pod.Subdomain)
	}
	labels := job.Spec.Template.Metadata.Labels
	if len(svc.Spec.Selector) == 0 {
		t.Error("the service selects nothing")
	}
	for k, v := range svc.Spec.Selector {
		if labels[k] != v {
			t.Errorf("service selector %s=%s is not a label of the pods %v", k, v, labels)
		}
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	env := map[string]string{}
	for _, e := range c.Env {
		if e.Name == "MOETRAIN_TOKEN" {
			if e.Value != "" || !strings.Contains(string(e.ValueFrom), "secretKeyRef") {
				t.Errorf("MOETRAIN_TOKEN must come from a Secret, not %q %s", e.Value, e.ValueFrom)
			}
			continue
		}
		env[e.Name] = e.Value
	}
	workers, err := strconv.Atoi(env["MOETRAIN_WORKERS"])
	if err != nil || workers < 1 {
		t.Fatalf("MOETRAIN_WORKERS=%q", env["MOETRAIN_WORKERS"])
	}
	if job.Spec.CompletionMode != "Indexed" || job.Spec.Completions != workers+1 || job.Spec.Parallelism != workers+1 ||
		pod.RestartPolicy != "Never" {
		t.Errorf("job: completionMode %q, completions %d, parallelism %d, restartPolicy %q; want Indexed, %d, %d, Never",
			job.Spec.CompletionMode, job.Spec.Completions, job.Spec.Parallelism, pod.RestartPolicy, workers+1, workers+1)
	}
	port := env["MOETRAIN_PORT"]
	wantJoin := net.JoinHostPort(job.Metadata.Name+"-0."+svc.Metadata.Name, port)
	if env["MOETRAIN_JOIN"] != wantJoin {
		t.Errorf("MOETRAIN_JOIN=%q, want index 0's name under the service, %q", env["MOETRAIN_JOIN"], wantJoin)
	}
	if len(svc.Spec.Ports) != 1 || strconv.Itoa(svc.Spec.Ports[0].Port) != port || strconv.Itoa(svc.Spec.Ports[0].TargetPort) != port ||
		len(c.Ports) != 1 || strconv.Itoa(c.Ports[0].ContainerPort) != port {
		t.Errorf("ports: service %+v, container %+v, MOETRAIN_PORT %s", svc.Spec.Ports, c.Ports, port)
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	for _, v := range pod.Volumes {
		delete(mounts, v.Name)
	}
	if len(mounts) > 0 {
		t.Errorf("mounts without a volume: %v", mounts)
	}

	// The container's command, with stand-ins for the binaries that
	// print their arguments, for every completion index.
	if len(c.Command) != 3 || c.Command[0] != "/bin/sh" || c.Command[1] != "-c" {
		t.Fatalf("command %q: want /bin/sh -c SCRIPT", c.Command)
	}
	stubs := t.TempDir()
	for _, name := range []string{"coordinator", "worker"} {
		if err := os.WriteFile(filepath.Join(stubs, name), []byte("#!/bin/sh\necho "+name+" \"$@\"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	runs := t.TempDir()
	args := map[int][]string{}
	for i := range workers + 1 {
		cmd := exec.Command("/bin/sh", "-c", c.Command[2])
		cmd.Env = []string{"PATH=" + stubs + ":/usr/bin:/bin", "JOB_COMPLETION_INDEX=" + strconv.Itoa(i), "MOETRAIN_TOKEN=t"}
		for k, v := range env {
			if k == "MOETRAIN_RUNS" {
				v = runs
			}
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("index %d: %v\n%s", i, err, out)
		}
		args[i] = strings.Fields(string(out))
	}
	flag := func(a []string, name string) string {
		for k := range len(a) - 1 {
			if a[k] == name {
				return a[k+1]
			}
		}
		return ""
	}
	if strings.Join(args[0][:2], " ") != "coordinator serve" || flag(args[0], "--listen") != net.JoinHostPort("0.0.0.0", port) ||
		flag(args[0], "--workers") != strconv.Itoa(workers) || flag(args[0], "--tls-cert") == "" ||
		filepath.Dir(flag(args[0], "--config")) != c.mountOf("config") {
		t.Errorf("index 0 runs %q", args[0])
	}
	// The TLS files named are those `coordinator certs` writes, under the
	// tls mount.
	certs := t.TempDir()
	if out, err := exec.Command(filepath.Join(binDir, "coordinator"), "certs", "--dir", certs, "--host", job.Metadata.Name+"-0."+svc.Metadata.Name,
		"--workers", strconv.Itoa(workers)).CombinedOutput(); err != nil {
		t.Fatalf("coordinator certs: %v\n%s", err, out)
	}
	checkTLS := func(i int, a []string, cert string) {
		for _, f := range []string{"--tls-cert", "--tls-key", "--tls-ca"} {
			p := flag(a, f)
			if filepath.Dir(p) != c.mountOf("tls") {
				t.Errorf("index %d: %s %s is not under the tls mount %s", i, f, p, c.mountOf("tls"))
			}
			if _, err := os.Stat(filepath.Join(certs, filepath.Base(p))); err != nil {
				t.Errorf("index %d: %s: coordinator certs wrote no such file: %v", i, f, err)
			}
		}
		if filepath.Base(flag(a, "--tls-cert")) != cert {
			t.Errorf("index %d: certificate %s, want %s", i, flag(a, "--tls-cert"), cert)
		}
	}
	checkTLS(0, args[0], "coordinator.pem")
	for i := 1; i <= workers; i++ {
		a := args[i]
		if a[0] != "worker" || flag(a, "--join") != wantJoin || filepath.Dir(flag(a, "--log-file")) != filepath.Join(runs, job.Metadata.Name) {
			t.Errorf("index %d runs %q", i, a)
		}
		checkTLS(i, a, "worker-"+strconv.Itoa(i-1)+".pem")
	}
	// Every flag the command passes is one the real binary has.
	re := regexp.MustCompile(`^--[a-z-]+$`)
	for i, a := range args {
		help := []string{"worker", "--help"}
		if i == 0 {
			help = []string{"coordinator", "serve", "--help"}
		}
		out, err := exec.Command(filepath.Join(binDir, help[0]), help[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%q: %v\n%s", help, err, out)
		}
		for _, f := range a {
			if re.MatchString(f) && !strings.Contains(string(out), "  "+f+" ") && !strings.Contains(string(out), ", "+f+" ") {
				t.Errorf("index %d passes %s, which %s does not have", i, f, strings.Join(help[:len(help)-1], " "))
			}
		}
	}
}
