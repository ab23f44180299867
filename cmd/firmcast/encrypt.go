package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/internal/atomicfile"
	"github.com/firmcast/firmcast/publisher"
)

// addEncryptFlags gives `image upload` (alias `image add`) --encrypt and
// --recipients: the image is encrypted once, with a fresh content key,
// for the devices the recipients select.
func addEncryptFlags(c *cobra.Command, up *publisher.ImageUpload) {
	var encrypt bool
	c.Aliases = append(c.Aliases, "add")
	c.Flags().BoolVar(&encrypt, "encrypt", false, "encrypt the image (AES-CTR, a fresh content key wrapped per recipient device); the server stores and serves only the ciphertext")
	c.Flags().StringSliceVar(&up.Recipients, "recipients", nil, "with --encrypt: the devices it is for, as device:ID,...|class:NAME|group:G (each needs a key: firmcast device key)")
	c.PreRunE = func(*cobra.Command, []string) error {
		switch {
		case encrypt && len(up.Recipients) == 0:
			return errors.New("--encrypt needs --recipients (device:ID,...|class:NAME|group:G)")
		case !encrypt && len(up.Recipients) > 0:
			return errors.New("--recipients is for --encrypt")
		}
		if _, err := publisher.ParseRecipients(up.Recipients); encrypt && err != nil {
			return fmt.Errorf("--recipients: %w", err)
		}
		return nil
	}
}

// newDeviceKeyCmd is `firmcast device key ID`: provision or rotate a
// device's key for encrypted images.
func newDeviceKeyCmd(a *apiFlags) *cobra.Command {
	var gen bool
	var kekFile, ecdhFile, out string
	c := &cobra.Command{
		Use:   "key ID (--generate --out FILE | --kek-file FILE | --ecdh-public-file FILE)",
		Short: "Provision or rotate a device's key for encrypted images",
		Long: `The publisher wraps the content key of every encrypted image for each
recipient device with that device's own key: a 16-byte AES key-encryption key
(KEK) that the device keeps in its root of trust (the "kek" field of its
device file, or firmcast-agent --kek-file), or the public half of its static
ECDH key (P-256 or X25519), whose private half never leaves the device.

--generate draws a KEK on the server and writes it, once, to --out (mode
0600) for the device's provisioning; the server keeps it wrapped with its
key-custody key and never shows it again. Setting a key again rotates it:
the new key id ("<device>#<generation>") names it in the wrapped keys of
campaigns created from then on.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var req publisher.DeviceKeyRequest
			switch {
			case gen && out == "":
				return errors.New("--generate needs --out FILE for the new key")
			case gen:
				req.Generate = true
			case kekFile != "":
				b, err := os.ReadFile(kekFile)
				if err != nil {
					return err
				}
				req.KEK = strings.TrimSpace(string(b))
			case ecdhFile != "":
				b, err := os.ReadFile(ecdhFile)
				if err != nil {
					return err
				}
				req.ECDHPublic = strings.TrimSpace(string(b))
			default:
				return errors.New("give one of --generate, --kek-file, --ecdh-public-file")
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			rep, err := cl.SetDeviceKey(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			if rep.KEK != "" {
				if _, err := hex.DecodeString(rep.KEK); err != nil {
					return fmt.Errorf("server answered a KEK that is not hex")
				}
				if err := atomicfile.WriteFile(out, []byte(rep.KEK+"\n"), 0o600); err != nil {
					return err
				}
			}
			rep.KEK = ""
			if a.json {
				return printAPIJSON(cmd.OutOrStdout(), rep)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s key %s (generation %d)\n", rep.Device, rep.Kind, rep.KeyID, rep.Generation)
			return nil
		},
	}
	c.Flags().BoolVar(&gen, "generate", false, "have the server draw a 16-byte KEK")
	c.Flags().StringVar(&out, "out", "", "with --generate: file to write the new KEK to (hex, mode 0600)")
	c.Flags().StringVar(&kekFile, "kek-file", "", "file holding the device's KEK in hex (16 bytes)")
	c.Flags().StringVar(&ecdhFile, "ecdh-public-file", "", "file holding the device's ECDH public key in hex (uncompressed P-256 point, or 32-byte X25519)")
	return c
}

// readHexKey reads a 16- or 32-byte key in hex from the file given to
// --flag.
func readHexKey(flag, path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", flag, err)
	}
	k, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || (len(k) != 16 && len(k) != 32) {
		return nil, fmt.Errorf("--%s: %s must hold 16 or 32 bytes in hex", flag, path)
	}
	return k, nil
}
