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
// validation, interpolation, consistency checks), with profiles enabled.
func loadCompose(t *testing.T, profiles ...string) *types.Project {
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
		Environment: types.Mapping{"FIRMCAST_BACKEND_SECRET_1": "test-secret-1", "FIRMCAST_BACKEND_SECRET_2": "test-secret-2", "FIRMCAST_API_KEY": "test-key",
			"FIRMCAST_EMQX_COOKIE": "test-cookie", "FIRMCAST_BROKER_HOOK_SECRET": "test-hook-secret-0123456789"},
	}, func(o *loader.Options) { o.SetProjectName("firmcast", true); o.Profiles = profiles })
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

// TestComposeEMQXProfile checks the emqx profile: a 3-node EMQX cluster
// (every node a seed of the others) with the hash_topic shared
// subscription strategy, whose only authenticator and only authorization
// source are the serve replicas' broker hook (HTTP, at the paths the hook
// serves, with its secret, deny by default, a short authorization cache);
// its serve replicas serve the hook under the name EMQX calls and are
// valid firmcast command lines on EMQX nodes, as is its sim; without the
// profile none of it starts. It is checked against the EMQX 5
// documentation only: no EMQX runs here.
func TestComposeEMQXProfile(t *testing.T) {
	for name, s := range loadCompose(t).Services {
		if strings.HasPrefix(s.Image, "emqx/") || slices.Contains(s.Profiles, "emqx") {
			t.Errorf("%s starts without the emqx profile", name)
		}
	}
	p := loadCompose(t, "emqx")
	conf := p.Configs["emqx-conf"].Content
	const hookHost = "firmcast-hook:8443"
	for _, want := range []string{"shared_subscription_strategy = hash_topic", "discovery_strategy = static",
		"use_username_as_clientid = true", "no_match = deny", "deny_action = disconnect",
		"backend = http", "type = http", "cache { enable = true, max_size = 32, ttl = 10s }",
		`url = "https://` + hookHost + broker.HookAuthnPath + `"`, `url = "https://` + hookHost + broker.HookAuthzPath + `"`,
		`clientid = "${clientid}"`, `username = "${username}"`, `password = "${password}"`,
		`topic = "${topic}"`, `action = "${action}"`, `retain = "${retain}"`,
		"verify = verify_peer", `server_name_indication = "firmcast-hook"`} {
		if !strings.Contains(conf, want) {
			t.Errorf("emqx.conf lacks %q", want)
		}
	}
	// The hook's secret, in both requests; no other authenticator or
	// source (a built-in database or ACL file would be a second policy).
	if n := strings.Count(conf, `"authorization" = "Bearer test-hook-secret-0123456789"`); n != 2 {
		t.Errorf("emqx.conf sends the hook secret %d times, want 2 (authn, authz)", n)
	}
	for _, not := range []string{"built_in_database", "type = file", "is_superuser"} {
		if strings.Contains(conf, not) {
			t.Errorf("emqx.conf has %q: the hook must be the only policy", not)
		}
	}
	var nodes []string
	var replicas, sims []string
	users := map[string]bool{}
	for name, s := range p.Services {
		if strings.HasPrefix(s.Image, "emqx/emqx:5") {
			node := s.Environment["EMQX_NODE__NAME"]
			if node == nil || s.Environment["EMQX_NODE__COOKIE"] == nil || *s.Environment["EMQX_NODE__COOKIE"] != "test-cookie" {
				t.Errorf("%s: node name %v, cookie %v", name, node, s.Environment["EMQX_NODE__COOKIE"])
				continue
			}
			nodes = append(nodes, *node)
			host := strings.TrimPrefix(*node, "emqx@")
			if s.Hostname != host || !slices.Contains(s.Networks["default"].Aliases, host) {
				t.Errorf("%s: node %s, hostname %q, aliases %v", name, *node, s.Hostname, s.Networks["default"])
			}
			if !slices.ContainsFunc(s.Configs, func(c types.ServiceConfigObjConfig) bool {
				return c.Source == "tls-ca" && c.Target == "/opt/emqx/etc/firmcast/ca.pem"
			}) {
				t.Errorf("%s: no CA to verify the hook with", name)
			}
			continue
		}
		if !slices.Contains(s.Profiles, "emqx") || len(s.Command) == 0 {
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
		i := slices.Index(s.Command, "--broker")
		if i < 0 || !strings.HasPrefix(s.Command[i+1], "mqtt://emqx-") {
			t.Errorf("%s: not on an EMQX node: %v", name, s.Command)
		}
		switch s.Command[0] {
		case "serve":
			replicas = append(replicas, name)
			if j := slices.Index(s.Command, "--backend-user"); j >= 0 {
				if users[s.Command[j+1]] {
					t.Errorf("%s: backend account %s used twice", name, s.Command[j+1])
				}
				users[s.Command[j+1]] = true
			}
			if s.Pid != "" || slices.Contains(s.Command, "--mosquitto-passwd") {
				t.Errorf("%s: tied to mosquitto (pid %q)", name, s.Pid)
			}
			if j := slices.Index(s.Command, "--broker-hook-listen"); j < 0 || j+1 >= len(s.Command) || !strings.HasSuffix(s.Command[j+1], ":8443") {
				t.Errorf("%s: no broker hook on :8443: %v", name, s.Command)
			}
			if !slices.Contains(s.Command, "--http-tls-cert") {
				t.Errorf("%s: the hook would carry device secrets in clear", name)
			}
			if env["FIRMCAST_BROKER_HOOK_SECRET"] != "test-hook-secret-0123456789" {
				t.Errorf("%s: hook secret %q, not the one EMQX sends", name, env["FIRMCAST_BROKER_HOOK_SECRET"])
			}
			if !slices.Contains(s.Networks["default"].Aliases, "firmcast-hook") {
				t.Errorf("%s: not reachable as firmcast-hook", name)
			}
			for _, port := range s.Ports {
				if port.Target == 8443 {
					t.Errorf("%s: publishes the hook's port", name)
				}
			}
		case "sim":
			sims = append(sims, name)
		}
	}
	if len(nodes) != 3 {
		t.Fatalf("EMQX nodes %v, want 3", nodes)
	}
	for _, n := range nodes {
		if !strings.Contains(conf, `"`+n+`"`) {
			t.Errorf("node %s is not a seed", n)
		}
	}
	if len(replicas) != 2 || len(users) != 2 || len(sims) != 1 {
		t.Errorf("emqx profile: replicas %v (accounts %v), sims %v; want 2 replicas with their own accounts and a sim", replicas, users, sims)
	}
}
