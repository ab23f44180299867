package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

func newBrokerCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "broker",
		Short: "Broker tools (access policy export for an external mosquitto or nats-server)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cmd.Help()
		},
	}
	cmd.AddCommand(newMosquittoConfigCmd(), newNATSConfigCmd())
	return cmd
}

type mosquittoConfigOptions struct {
	out           string
	root          string
	credentials   string
	backendUser   string
	backendSecret string
	devices       []string
	maxQueued     int
}

func newMosquittoConfigCmd() *cobra.Command {
	o := &mosquittoConfigOptions{}
	cmd := &cobra.Command{
		Use:   "mosquitto-config --out DIR [--credentials FILE | --backend-secret S --device ID:SECRET[:CLASS]...]",
		Short: "Write a mosquitto password file, ACL file and conf snippet enforcing firmcast's access policy",
		Long: `Write firmcast's broker access policy for an external mosquitto 2.0 into DIR:

  passwd         password_file: one PBKDF2-SHA512 ($7$) hash per account,
                 as mosquitto_passwd writes them (mode 0600)
  acl            acl_file: the backend users may do anything under the topic
                 root; devices get pattern lines on their own user name (%u),
                 so the file does not grow with the fleet
  firmcast.conf  password_file, acl_file, no anonymous access,
                 use_username_as_clientid true (a client's id is its user
                 name, so no client can drop another identity's connection;
                 give every backend instance an account of its own), and
                 the queue limits firmcast relies on (small
                 max_queued_messages so a broker never holds an image per
                 offline device, set_tcp_nodelay true)

Include firmcast.conf from mosquitto.conf (include_dir) or copy its lines.

Accounts come from a credentials file (--credentials), one per line:

  backend <user> <secret>
  service <user> <secret>
  device  <device-id> <secret> [<class>]

or from flags (--backend-user/--backend-secret, --device ID:SECRET[:CLASS]
repeated). Both may be combined. A device's user name is its device id.
Secrets on the command line are visible to other local users: prefer the
file, or FIRMCAST_BACKEND_SECRET.

The policy: devices may read only their own notices and chunk replies,
class announcements and image chunk broadcasts, and publish only their own
reports and chunk requests; only backend users publish notices and chunks.
(Unlike the embedded brokers, mosquitto lets a device read every class's
announcements: a per-class rule would need one line per device.) Service
accounts (campaign API callers) are left out: they use NATS only
(firmcast broker nats-config).`,
		Example: `  firmcast broker mosquitto-config --out /etc/mosquitto/conf.d/firmcast \
      --credentials /etc/firmcast/credentials
  firmcast broker mosquitto-config --out ./mq --root acme/firmcast \
      --backend-secret "$BACKEND_SECRET" --device dev1:s3cret:sensor`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runMosquittoConfig(cmd, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.out, "out", "", "directory to write passwd, acl and firmcast.conf into (created if missing; required)")
	f.StringVar(&o.root, "root", schemas.DefaultRoot, "topic root the policy protects (segments separated by /)")
	f.StringVar(&o.credentials, "credentials", "", "credentials file (lines: backend USER SECRET | device ID SECRET [CLASS])")
	f.StringVar(&o.backendUser, "backend-user", "backend", "backend user name (used with --backend-secret)")
	f.StringVar(&o.backendSecret, "backend-secret", "", "backend secret (adds the backend account)")
	f.StringArrayVar(&o.devices, "device", nil, "device account as ID:SECRET[:CLASS] (repeatable)")
	f.IntVar(&o.maxQueued, "max-queued", broker.DefaultMaxQueued, "mosquitto max_queued_messages per client")
	return cmd
}

func runMosquittoConfig(cmd *cobra.Command, o *mosquittoConfigOptions) error {
	if o.out == "" {
		return fmt.Errorf("--out is required")
	}
	topics, err := schemas.NewTopics(o.root)
	if err != nil {
		return fmt.Errorf("--root: %w", err)
	}
	accounts, err := o.accounts(nil)
	if err != nil {
		return err
	}
	files, err := broker.MosquittoConfig(o.out, broker.MosquittoSpec{Topics: topics, Accounts: accounts, MaxQueued: o.maxQueued})
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "wrote %s\nwrote %s\nwrote %s\n", files.Passwd, files.ACL, files.Conf)
	fmt.Fprintf(w, "%d accounts under topic root %q; include %s from mosquitto.conf\n", len(accounts), topics.Root(), files.Conf)
	return nil
}

// accounts gathers the accounts of --credentials, --backend-secret,
// services (USER:SECRET) and --device.
func (o *mosquittoConfigOptions) accounts(services []string) ([]broker.Account, error) {
	var accounts []broker.Account
	if o.credentials != "" {
		as, err := readAccountsFile(o.credentials)
		if err != nil {
			return nil, err
		}
		accounts = append(accounts, as...)
	}
	if o.backendSecret != "" {
		accounts = append(accounts, broker.Account{Identity: broker.Identity{Username: o.backendUser, Role: broker.RoleBackend}, Secret: o.backendSecret})
	}
	for _, sv := range services {
		user, secret, ok := strings.Cut(sv, ":")
		a := broker.Account{Identity: broker.Identity{Username: user, Role: broker.RoleService}, Secret: secret}
		if !ok || user == "" || secret == "" || strings.Contains(secret, ":") {
			return nil, fmt.Errorf("--service %q: want USER:SECRET", redactDevice(sv))
		}
		if _, err := broker.NewCredentialStoreFrom([]broker.Account{a}); err != nil {
			return nil, fmt.Errorf("--service %q: %w", redactDevice(sv), err)
		}
		accounts = append(accounts, a)
	}
	for _, d := range o.devices {
		a, err := parseDeviceFlag(d)
		if err != nil {
			return nil, err
		}
		accounts = append(accounts, a)
	}
	if len(accounts) == 0 {
		return nil, fmt.Errorf("no accounts: give --credentials FILE, or --backend-secret and --device ID:SECRET[:CLASS]")
	}
	return accounts, nil
}

type natsConfigOptions struct {
	mosquittoConfigOptions
	account  string
	services []string
}

func newNATSConfigCmd() *cobra.Command {
	o := &natsConfigOptions{}
	cmd := &cobra.Command{
		Use:   "nats-config --out DIR [--credentials FILE | --backend-secret S --service USER:SECRET... --device ID:SECRET[:CLASS]...]",
		Short: "Write a nats-server configuration (accounts, users, role permissions) enforcing firmcast's access policy",
		Long: `Write firmcast's broker access policy for an external nats-server (2.9.10
and later) into DIR/firmcast.conf (mode 0600): one NATS account with
JetStream enabled, whose users are the given accounts, each with a bcrypt
hash of its secret and the permissions of its role, the same the embedded
NATS server enforces:

  backend  the publisher (one account per publisher instance): anything
           under the topic root, and the JetStream, KV and object-store
           APIs (it owns campaigns, the registry, API keys, the audit log)
  service  a program calling the campaign API over NATS: publish campaign
           API requests (<root>.v1.api.campaign.<op>) and read replies on
           its own inbox (<root>.v1.api.inbox.<user>.>, so it connects
           with its user name as client id); no JetStream at all. What a
           request may do is decided by the API key it carries.
  device   its own report, notice, chunk-reply and inbox subjects, its
           class's announcements, image chunks and chunk requests, and
           the direct get of its own retained notice

No anonymous access. Run nats-server with -c DIR/firmcast.conf and the
listen, JetStream and cluster settings as flags (compose.yaml does), or
include the file from your nats-server.conf; every node of a cluster needs
the same file.

Accounts come from a credentials file (--credentials), one per line:

  backend <user> <secret>
  service <user> <secret>
  device  <device-id> <secret> [<class>]

or from flags (--backend-user/--backend-secret, --service USER:SECRET and
--device ID:SECRET[:CLASS], repeated). Both may be combined. Every account
needs its clear secret (at most 72 bytes, bcrypt's limit). Device
permissions name the device, so devices registered later through the API
are not in the file: re-run nats-config with their credentials and reload
nats-server (nats-server --signal reload).`,
		Example: `  firmcast broker nats-config --out /etc/nats/firmcast --credentials /etc/firmcast/credentials
  nats-server -c /etc/nats/firmcast/firmcast.conf -js -sd /var/lib/nats`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runNATSConfig(cmd, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.out, "out", "", "directory to write firmcast.conf into (created if missing; required)")
	f.StringVar(&o.root, "root", schemas.DefaultRoot, "topic root the policy protects (segments separated by /)")
	f.StringVar(&o.credentials, "credentials", "", "credentials file (lines: backend USER SECRET | service USER SECRET | device ID SECRET [CLASS])")
	f.StringVar(&o.backendUser, "backend-user", "backend", "backend user name (used with --backend-secret)")
	f.StringVar(&o.backendSecret, "backend-secret", "", "backend secret (adds the backend account)")
	f.StringArrayVar(&o.services, "service", nil, "service account as USER:SECRET (repeatable)")
	f.StringArrayVar(&o.devices, "device", nil, "device account as ID:SECRET[:CLASS] (repeatable)")
	f.StringVar(&o.account, "account", broker.DefaultNATSAccount, "name of the NATS account the users share")
	return cmd
}

func runNATSConfig(cmd *cobra.Command, o *natsConfigOptions) error {
	if o.out == "" {
		return fmt.Errorf("--out is required")
	}
	topics, err := schemas.NewTopics(o.root)
	if err != nil {
		return fmt.Errorf("--root: %w", err)
	}
	accounts, err := o.accounts(o.services)
	if err != nil {
		return err
	}
	files, err := broker.NATSConfig(o.out, broker.NATSSpec{Topics: topics, Accounts: accounts, Account: o.account})
	if err != nil {
		return err
	}
	roles := map[broker.Role]int{}
	for _, a := range accounts {
		roles[a.Role]++
	}
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "wrote %s\n", files.Conf)
	fmt.Fprintf(w, "account %s: %d backend, %d service, %d device users under topic root %q; run nats-server -c %s\n",
		o.account, roles[broker.RoleBackend], roles[broker.RoleService], roles[broker.RoleDevice], topics.Root(), files.Conf)
	return nil
}

// parseDeviceFlag parses ID:SECRET[:CLASS].
func parseDeviceFlag(s string) (broker.Account, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return broker.Account{}, fmt.Errorf("--device %q: want ID:SECRET or ID:SECRET:CLASS", redactDevice(s))
	}
	a := broker.Account{Identity: broker.Identity{Username: parts[0], Role: broker.RoleDevice, Device: parts[0]}, Secret: parts[1]}
	if len(parts) == 3 {
		a.Class = parts[2]
	}
	if _, err := broker.NewCredentialStoreFrom([]broker.Account{a}); err != nil {
		return broker.Account{}, fmt.Errorf("--device %q: %w", redactDevice(s), err)
	}
	return a, nil
}

func redactDevice(s string) string {
	if i := strings.IndexByte(s, ':'); i >= 0 {
		rest := s[i+1:]
		if j := strings.IndexByte(rest, ':'); j >= 0 {
			return s[:i+1] + "xxxxx" + rest[j:]
		}
		return s[:i+1] + "xxxxx"
	}
	return s
}

func readAccountsFile(path string) ([]broker.Account, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--credentials: %w", err)
	}
	defer f.Close()
	as, err := broker.ReadAccounts(f)
	if err != nil {
		return nil, fmt.Errorf("--credentials %s: %w", path, err)
	}
	return as, nil
}
