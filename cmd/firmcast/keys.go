package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/internal/atomicfile"
	"github.com/firmcast/firmcast/schemas/suit"
)

func newKeysCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "keys",
		Short: "Manage manifest signing keys",
	}
	c.AddCommand(newKeysGenCmd())
	return c
}

func newKeysGenCmd() *cobra.Command {
	var alg, out string
	var force bool
	c := &cobra.Command{
		Use:   "gen --alg es256|ed25519 --out NAME",
		Short: "Generate a manifest signing key pair",
		Long: `Generate a manifest signing key pair: NAME.pem holds the private key
(PKCS#8, mode 0600) and NAME.pub.pem the public key (SubjectPublicKeyInfo)
that devices trust. Existing files are not overwritten unless --force.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return errors.New("keys gen: --out NAME is required")
			}
			key, err := suit.GenerateKey(alg, nil)
			if err != nil {
				return fmt.Errorf("keys gen: --alg: %w", err)
			}
			priv, err := suit.MarshalPrivateKeyPEM(key)
			if err != nil {
				return fmt.Errorf("keys gen: %w", err)
			}
			pub, err := suit.MarshalPublicKeyPEM(key.Public())
			if err != nil {
				return fmt.Errorf("keys gen: %w", err)
			}
			privPath, pubPath := out+".pem", out+".pub.pem"
			if !force {
				for _, p := range []string{privPath, pubPath} {
					if _, err := os.Stat(p); err == nil {
						return fmt.Errorf("keys gen: %s exists (use --force to overwrite)", p)
					} else if !errors.Is(err, fs.ErrNotExist) {
						return fmt.Errorf("keys gen: %w", err)
					}
				}
			}
			if err := atomicfile.WriteFile(privPath, priv, 0o600); err != nil {
				return fmt.Errorf("keys gen: %w", err)
			}
			if err := atomicfile.WriteFile(pubPath, pub, 0o644); err != nil {
				return fmt.Errorf("keys gen: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (private, keep offline) and %s (public)\n", privPath, pubPath)
			return nil
		},
	}
	c.Flags().StringVar(&alg, "alg", "es256", "key algorithm: es256 (ECDSA P-256) or ed25519")
	c.Flags().StringVar(&out, "out", "", "output name: writes NAME.pem and NAME.pub.pem")
	c.Flags().BoolVar(&force, "force", false, "overwrite existing files")
	return c
}

// readTrustFiles reads every public key of every PEM file given to --flag.
func readTrustFiles(flag string, paths []string) (suit.TrustAnchors, error) {
	anchors, err := suit.ReadTrustFiles(paths...)
	if err != nil {
		return nil, fmt.Errorf("--%s %w", flag, err)
	}
	return anchors, nil
}
