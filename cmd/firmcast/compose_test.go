package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/spf13/pflag"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/brokerproc"
	"github.com/firmcast/firmcast/schemas"
)

// loadCompose loads ../../compose.yaml with the compose-spec loader (schema
// validation, interpolation, consistency checks).
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(repo, "compose.yaml")
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	p, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  repo,
		ConfigFiles: []types.ConfigFile{{Filename: file, Content: b}},
		Environment: types.Mapping{"FIRMCAST_BACKEND_SECRET_1": "test-secret-1", "FIRMCAST_BACKEND_SECRET_2": "test-secret-2", "FIRMCAST_API_KEY": "test-key"},
	}, func(o *loader.Options) { o.SetProjectName("firmcast", true) })
	if err != nil {
		t.Fatalf("compose.yaml does not load: %v", err)
	}
	return p
}

// checkCLI reports why args is not a valid firmcast command line: an
// unknown command, a command that does nothing, an unknown flag or bad
// arguments. env are FIRMCAST_* variables that must name flags too.
func checkCLI(args []string, env map[string]string) []string {
	var errs []string
	root := newRootCmd()
	c, rest, err := root.Find(args)
	if err != nil {
		return []string{err.Error()}
	}
	if !c.Runnable() {
		return []string{"`" + strings.Join(args, " ") + "` is not a runnable command"}
	}
	if err := c.ParseFlags(rest); err != nil {
		errs = append(errs, err.Error())
	} else if err := c.ValidateArgs(c.Flags().Args()); err != nil {
		errs = append(errs, err.Error())
	}
	for k := range env {
		name, ok := strings.CutPrefix(k, "FIRMCAST_")
		if !ok {
			continue
		}
		flag := strings.ReplaceAll(strings.ToLower(name), "_", "-")
		var found *pflag.Flag
		if found = c.Flags().Lookup(flag); found == nil {
			found = c.InheritedFlags().Lookup(flag)
		}
		if found == nil {
			errs = append(errs, k+" names no flag of `"+c.CommandPath()+"`")
		}
	}
	return errs
}

func TestCheckCLIRejects(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
	}{
		{[]string{"serve", "--no-such-flag", "x"}, nil},
		{[]string{"no-such-command"}, nil},
		{[]string{"campaign"}, nil},
		{[]string{"sim"}, map[string]string{"FIRMCAST_NO_SUCH": "1"}},
		{[]string{"campaign", "status"}, nil},
	} {
		if errs := checkCLI(tc.args, tc.env); len(errs) == 0 {
			t.Errorf("%v %v: accepted", tc.args, tc.env)
		}
	}
	if errs := checkCLI([]string{"serve", "--broker", "mqtt://x:1883", "--nats", "nats://y:4222"}, map[string]string{"FIRMCAST_API_KEY": "k"}); len(errs) > 0 {
		t.Errorf("a valid serve line rejected: %v", errs)
	}
}

func TestComposeFile(t *testing.T) {
	p := loadCompose(t)
	var serve, sim, natsNodes []string
	backendUsers := map[string]string{}
	mosquitto := false
	for name, s := range p.Services {
		fromRepo := s.Build != nil && (s.Build.Context == p.WorkingDir || s.Build.Context == ".")
		switch {
		case fromRepo:
			if s.Build.Dockerfile != "" && s.Build.Dockerfile != "Dockerfile" {
				t.Errorf("%s: builds %s, want the repo's Dockerfile", name, s.Build.Dockerfile)
			}
			if len(s.Command) == 0 {
				t.Errorf("%s: no command", name)
				continue
			}
			env := map[string]string{}
			for k, v := range s.Environment {
				if v != nil {
					env[k] = *v
				}
			}
			for _, e := range checkCLI(s.Command, env) {
				t.Errorf("%s: firmcast %s: %s", name, strings.Join(s.Command, " "), e)
			}
			switch s.Command[0] {
			case "serve":
				serve = append(serve, name)
				if i := slices.Index(s.Command, "--backend-user"); i < 0 || i+1 >= len(s.Command) {
					t.Errorf("%s: serve without --backend-user: replicas would share the first backend account", name)
				} else {
					backendUsers[name] = s.Command[i+1]
				}
				if !slices.Contains(s.Command, "--broker") || !slices.Contains(s.Command, "--nats") {
					t.Errorf("%s: serve without --broker and --nats would start embedded brokers", name)
				}
			case "sim":
				sim = append(sim, name)
			}
		case strings.HasPrefix(s.Image, "nats:"):
			natsNodes = append(natsNodes, name)
			if !slices.Contains(s.Command, "-js") || !slices.Contains(s.Command, "--routes") {
				t.Errorf("%s: a NATS node without JetStream or cluster routes: %v", name, s.Command)
			}
			if i := slices.Index(s.Command, "-c"); i < 0 || i+1 >= len(s.Command) || !strings.HasSuffix(s.Command[i+1], "/firmcast.conf") {
				t.Errorf("%s: a NATS node without the configuration `firmcast broker nats-config` writes (no authentication): %v", name, s.Command)
			}
			if _, ok := s.DependsOn["nats-config"]; !ok {
				t.Errorf("%s: does not wait for its generated config", name)
			}
		case strings.HasPrefix(s.Image, "eclipse-mosquitto:"):
			mosquitto = true
			if len(s.DependsOn) == 0 {
				t.Errorf("%s: does not wait for its generated config", name)
			}
		}
	}
	if len(natsNodes) != 3 {
		t.Errorf("NATS nodes %v, want a 3-node cluster", natsNodes)
	}
	for _, n := range natsNodes {
		routes := strings.Join(p.Services[n].Command, " ")
		for _, other := range natsNodes {
			if other != n && !strings.Contains(routes, other+":6222") {
				t.Errorf("%s has no route to %s", n, other)
			}
		}
	}
	if !mosquitto {
		t.Error("no eclipse-mosquitto service")
	}
	if len(serve) < 2 {
		t.Errorf("serve replicas %v, want two", serve)
	}
	// Each replica has its own backend account, present in the
	// credentials both brokers' configs are generated from.
	creds, err := broker.ReadAccounts(strings.NewReader(p.Configs["credentials"].Content))
	if err != nil {
		t.Fatalf("compose credentials: %v", err)
	}
	seen := map[string]string{}
	for replica, user := range backendUsers {
		if other, dup := seen[user]; dup {
			t.Errorf("%s and %s share the backend account %s", replica, other, user)
		}
		seen[user] = replica
		if !slices.ContainsFunc(creds, func(a broker.Account) bool { return a.Username == user && a.Role == broker.RoleBackend }) {
			t.Errorf("%s: --backend-user %s is not a backend account of the credentials config", replica, user)
		}
	}
	// The generated NATS configuration is one nats-server accepts.
	dir := t.TempDir()
	files, err := broker.NATSConfig(dir, broker.NATSSpec{Topics: schemas.MustTopics(schemas.DefaultRoot), Accounts: creds})
	if err != nil {
		t.Fatalf("nats-config from the compose credentials: %v", err)
	}
	if bin, err := brokerproc.LookBinary("nats-server"); err == nil {
		if out, err := exec.Command(bin, "-c", files.Conf, "-t").CombinedOutput(); err != nil {
			t.Errorf("nats-server refuses the generated config: %v\n%s", err, out)
		}
	}
	if len(sim) == 0 {
		t.Error("no simulated fleet (firmcast sim)")
	}
	df, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"./cmd/firmcast", "./cmd/firmcast-agent", "ENTRYPOINT"} {
		if !strings.Contains(string(df), want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}
