package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/internal/atomicfile"
	"github.com/firmcast/firmcast/internal/devicefile"
	"github.com/firmcast/firmcast/schemas/suit"
	"github.com/spf13/cobra"
)

// The bootloader simulator keeps a device in two files: the flash (a
// file-backed bootctl flash, bytes inverted so it is sparse) and its device
// file (internal/devicefile), which stands for what is not on the flash:
// the geometry and layout the bootloader is built with, and the
// root-of-trust store (device key, public keys).
const (
	bootSectorSize  = 4096
	bootWriteAlign  = 16
	bootBootSectors = 8
)

func newBootCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "boot",
		Short: "Simulate the bootloader on a file-backed flash",
		Long: `boot drives the bootctl bootloader on a simulated NOR flash kept in a file.

  init     create an erased flash with N candidate slots and a device key
  stage    write an image with its header and tag into a free slot
  run      boot once (optionally cutting power at a flash operation)
  confirm  confirm the image in trial state
  inspect  show headers, trial state, floor and last revert reason
  combine  merge a bootloader and an application into one flash image
  chain    boot a multi-stage device (bootloader stage, application) once

The device's layout and root-of-trust store live next to the flash in
FILE.device.json.`,
	}
	c.AddCommand(newBootInitCmd(), newBootStageCmd(), newBootRunCmd(), newBootConfirmCmd(),
		newBootInspectCmd(), newBootCombineCmd(), newBootChainCmd())
	return c
}

func bootOut(cmd *cobra.Command, asJSON bool, v any, text func(w io.Writer)) error {
	w := cmd.OutOrStdout()
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	text(w)
	return nil
}

func bootLayout(slots int, slotSize int64) (bootctl.Geometry, bootctl.Layout, error) {
	if slots < 2 {
		return bootctl.Geometry{}, bootctl.Layout{}, fmt.Errorf("--slots %d: need at least 2", slots)
	}
	if slotSize <= 0 || slotSize%bootSectorSize != 0 || slotSize < 2*bootSectorSize {
		return bootctl.Geometry{}, bootctl.Layout{}, fmt.Errorf("--slot-size %d: want a multiple of %d bytes, at least %d (one sector is the header)",
			slotSize, bootSectorSize, 2*bootSectorSize)
	}
	l := bootctl.DefaultLayout(bootBootSectors, slots, int(slotSize/bootSectorSize))
	g := bootctl.Geometry{SectorSize: bootSectorSize, Sectors: l.Sectors(), WriteAlign: bootWriteAlign}
	return g, l, l.Validate(g)
}

func parseDeviceKey(s string) ([]byte, error) {
	key, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("--device-key: not hex: %w", err)
	}
	if len(key) < 16 {
		return nil, fmt.Errorf("--device-key: %d bytes, need at least 16", len(key))
	}
	return key, nil
}

func newBootInitCmd() *cobra.Command {
	var (
		flash, keyHex, pubFile, from string
		kekFile, kekID               string
		encryptedSlots               bool
		slots                        int
		slotSize, bootSize           int64
		asJSON                       bool
	)
	c := &cobra.Command{
		Use:   "init",
		Short: "Create an erased flash and its device file, or a device from a combined factory image",
		Long: `init creates a flash file (erased) and its device file. With --from, the
flash holds a combined image made by ` + "`firmcast boot combine`" + ` (give the
--slots, --slot-size, --boot-size and --device-key given to combine; --pubkey
for a secure-boot image combined with --envelope), and init checks that
its application boots.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" && keyHex != "" && pubFile != "" {
				return errors.New("if any flags in the group [device-key pubkey] are set none of the others can be; [device-key pubkey] were all set (except with --from)")
			}
			g, l, err := bootLayout(slots, slotSize)
			if from != "" {
				g, l, _, err = factoryLayout(slots, slotSize, bootSize, -1)
				if keyHex == "" {
					return errors.New("--from: give the --device-key the image was combined with (its application header is tagged with it)")
				}
			}
			if err != nil {
				return err
			}
			dev := devicefile.File{Geometry: g, Layout: l, TrialBoots: bootctl.DefaultTrialBoots}
			var key []byte
			if keyHex != "" {
				if key, err = parseDeviceKey(keyHex); err != nil {
					return err
				}
			} else {
				key = make([]byte, 32)
				if _, err := rand.Read(key); err != nil {
					return err
				}
			}
			dev.DeviceKey = hex.EncodeToString(key)
			if pubFile != "" {
				if dev.PublicKey, err = os.ReadFile(pubFile); err != nil {
					return fmt.Errorf("--pubkey: %w", err)
				}
				if _, err := dev.RootOfTrust(); err != nil {
					return fmt.Errorf("--pubkey %s: %w", pubFile, err)
				}
			}
			if kekFile != "" {
				// The device's key-encryption key for encrypted images, in
				// its root of trust (the device file).
				k, err := readHexKey("kek-file", kekFile)
				if err != nil {
					return err
				}
				dev.KEK, dev.KEKID = hex.EncodeToString(k), kekID
			}
			if encryptedSlots {
				if kekFile == "" {
					return errors.New("--encrypted-slots needs --kek-file: the bootloader derives the slots' key from the device's KEK")
				}
				dev.EncryptedSlots = true
			}
			if _, err := os.Stat(flash); err == nil {
				return fmt.Errorf("--flash %s: exists; remove it to start a new device", flash)
			}
			f, err := bootctl.CreateFileFlash(flash, g)
			if err != nil {
				return err
			}
			var active *bootctl.ImageInfo
			if from != "" {
				if active, err = initFrom(cmd.Context(), f, l, dev, from); err != nil {
					f.Close()
					os.Remove(flash)
					return err
				}
			}
			if err := f.Close(); err != nil {
				return err
			}
			if err := devicefile.Write(flash, dev); err != nil {
				return err
			}
			res := map[string]any{"flash": flash, "device_file": devicefile.Path(flash), "geometry": g, "layout": l,
				"image_capacity": l.ImageCapacity(g), "secure_boot": pubFile != "", "encrypted_slots": encryptedSlots}
			if active != nil {
				res["active"] = active
			}
			return bootOut(cmd, asJSON, res, func(w io.Writer) {
				fmt.Fprintf(w, "flash %s: %d bytes, %d slots of %d bytes (images up to %d bytes), secure boot %v\n",
					flash, g.Size(), slots, slotSize, l.ImageCapacity(g), pubFile != "")
			})
		},
	}
	c.Flags().StringVar(&flash, "flash", "", "flash file to create (required)")
	c.Flags().IntVar(&slots, "slots", 2, "number of candidate slots (>= 2)")
	c.Flags().Int64Var(&slotSize, "slot-size", 0, "bytes per slot, header sector included (required)")
	c.Flags().StringVar(&keyHex, "device-key", "", "per-device HMAC key in hex (default: random)")
	c.Flags().StringVar(&pubFile, "pubkey", "", "public key file: turns on secure-boot mode")
	c.Flags().StringVar(&kekFile, "kek-file", "", "file holding the device's key-encryption key for encrypted images in hex (firmcast device key --generate --out); kept in the device file")
	c.Flags().StringVar(&kekID, "kek-id", "", "the KEK's key id, as the server names it (\"<device>#<generation>\"); empty matches any")
	c.Flags().BoolVar(&encryptedSlots, "encrypted-slots", false, "candidate slots keep encrypted images' ciphertext and the bootloader decrypts while it installs (needs --kek-file; not with --pubkey)")
	c.Flags().StringVar(&from, "from", "", "combined factory image (boot combine) the flash starts with")
	c.Flags().Int64Var(&bootSize, "boot-size", bootBootSectors*bootSectorSize, "with --from: bytes reserved for the bootloader, as given to boot combine")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	c.MarkFlagsMutuallyExclusive("encrypted-slots", "pubkey")
	_ = c.MarkFlagRequired("flash")
	_ = c.MarkFlagRequired("slot-size")
	return c
}

func newBootStageCmd() *cobra.Command {
	var (
		flash, imagePath, campaign, envPath string
		version, counter                    uint64
		asJSON                              bool
	)
	c := &cobra.Command{
		Use:   "stage",
		Short: "Write an image with header and tag into a free slot",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var envelope []byte
			var m *suit.Manifest
			if envPath != "" {
				var err error
				if envelope, err = os.ReadFile(envPath); err != nil {
					return fmt.Errorf("--envelope: %w", err)
				}
				// Decode only: the bootloader verifies the envelope
				// (Commit, and every boot) before trusting it.
				if m, err = suit.Decode(envelope); err != nil {
					return fmt.Errorf("--envelope %s: envelope refused: %w", envPath, err)
				}
				if !cmd.Flags().Changed("version") {
					version = m.Seq
				}
			} else if !cmd.Flags().Changed("version") {
				return errors.New("--version is required (or --envelope, whose sequence number is the version)")
			} else if !cmd.Flags().Changed("security-counter") {
				return errors.New("no envelope: --security-counter is required (with --envelope it is the manifest's security version)")
			}
			img, err := os.Open(imagePath)
			if err != nil {
				return fmt.Errorf("--image: %w", err)
			}
			defer img.Close()
			fi, err := img.Stat()
			if err != nil {
				return err
			}
			d, f, err := devicefile.Open(flash)
			if err != nil {
				return err
			}
			defer f.Close()
			slot, err := d.FreeSlot()
			if err != nil {
				return err
			}
			if m != nil {
				if counter, err = stageCounter(m, d, counter, cmd.Flags().Changed("security-counter")); err != nil {
					return err
				}
			}
			ctx := cmd.Context()
			cand, err := d.OpenCandidate(ctx, slot, uint64(fi.Size()))
			if err != nil {
				return fmt.Errorf("--image %s: %w", imagePath, err)
			}
			h := sha256.New()
			buf := make([]byte, 64<<10)
			for off := int64(0); ; {
				n, rerr := img.Read(buf)
				if n > 0 {
					h.Write(buf[:n])
					if _, err := cand.WriteAt(buf[:n], off); err != nil {
						return err
					}
					off += int64(n)
				}
				if rerr == io.EOF {
					break
				}
				if rerr != nil {
					return fmt.Errorf("--image: %w", rerr)
				}
			}
			info := bootctl.CandidateInfo{Version: version, SecurityCounter: counter, Campaign: campaign, Envelope: envelope}
			h.Sum(info.Digest[:0])
			if err := cand.Commit(ctx, info); err != nil {
				return err
			}
			res := map[string]any{"slot": slot, "version": version, "security_counter": counter,
				"size": fi.Size(), "digest": bootctl.Digest(info.Digest), "campaign": campaign}
			return bootOut(cmd, asJSON, res, func(w io.Writer) {
				fmt.Fprintf(w, "staged version %d (%d bytes, sha256 %x) in slot %d\n", version, fi.Size(), info.Digest, slot)
			})
		},
	}
	c.Flags().StringVar(&flash, "flash", "", "flash file (required)")
	c.Flags().StringVar(&imagePath, "image", "", "image file (required)")
	c.Flags().Uint64Var(&version, "version", 0, "firmware version: the manifest's sequence number (required without --envelope)")
	c.Flags().StringVar(&envPath, "envelope", "", "signed SUIT envelope of the image, kept for secure-boot mode (default --version: its sequence number)")
	c.Flags().Uint64Var(&counter, "security-counter", 0, "anti-rollback security counter (required without --envelope; with one, taken from the manifest's security version, or the current floor when it sets none)")
	c.Flags().StringVar(&campaign, "campaign", "", "campaign id")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	for _, n := range []string{"flash", "image"} {
		_ = c.MarkFlagRequired(n)
	}
	return c
}

// stageCounter is the security counter of an image staged with the
// manifest m: the manifest's security version, or, when it sets none, the
// device's current floor (confirming it keeps the floor), as the device
// agent does. A --security-counter given too (flag, set) must agree.
func stageCounter(m *suit.Manifest, d *bootctl.Device, flag uint64, set bool) (uint64, error) {
	sv, ok, err := m.SecurityVersion()
	if err != nil {
		return 0, fmt.Errorf("--envelope: %w", err)
	}
	if !ok {
		st, err := d.Status()
		if err != nil {
			return 0, err
		}
		sv = st.Floor
	}
	if set && flag != sv {
		return 0, fmt.Errorf("--security-counter %d disagrees with the envelope (security version %d%s)", flag, sv,
			map[bool]string{true: "", false: ", none set: the current floor"}[ok])
	}
	return sv, nil
}

func newBootRunCmd() *cobra.Command {
	var (
		flash           string
		cutAfter        int64
		torn, interrupt bool
		asJSON          bool
	)
	c := &cobra.Command{
		Use:   "run",
		Short: "Boot once and print the decision",
		Long: `run performs one boot. With --cut-after K power is cut at flash operation
K (counting programs and erases from 0): the first K operations complete.
--torn makes that operation a torn program, --interrupt-erase an
interrupted erase (if it is one; otherwise it is a plain cut). Run again to
see the next boot recover. Exit status 3 means no image may boot.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (torn || interrupt) && cutAfter < 0 {
				return errors.New("--torn and --interrupt-erase need --cut-after")
			}
			d, f, err := devicefile.Open(flash)
			if err != nil {
				return err
			}
			defer f.Close()
			if cutAfter >= 0 {
				kind := bootctl.FaultCut
				if torn {
					kind = bootctl.FaultTorn
				} else if interrupt {
					kind = bootctl.FaultInterruptErase
				}
				f.Arm(bootctl.Fault{After: uint64(cutAfter), Kind: kind})
			}
			dec, berr := d.Boot(cmd.Context())
			cut := errors.Is(berr, bootctl.ErrPowerLost)
			if berr != nil && !cut && !errors.Is(berr, bootctl.ErrNoBootableImage) {
				return berr
			}
			res := struct {
				bootctl.Decision
				PowerCut bool   `json:"power_cut"`
				Error    string `json:"error,omitempty"`
			}{Decision: dec, PowerCut: cut}
			if berr != nil {
				res.Error = berr.Error()
			}
			if err := bootOut(cmd, asJSON, res, func(w io.Writer) {
				switch {
				case cut:
					fmt.Fprintf(w, "power cut after %d flash operations\n", dec.Ops)
				case !dec.Booted:
					fmt.Fprintf(w, "%s: %s (%d flash operations)\n", dec.Action, berr, dec.Ops)
				default:
					fmt.Fprintf(w, "booted version %d: %s", dec.Version, dec.Action)
					if dec.Reason != "" {
						fmt.Fprintf(w, " (%s)", dec.Reason)
					}
					if dec.Trial {
						fmt.Fprintf(w, ", trial boot %d of %d", dec.TrialBoots, dec.TrialLimit)
					}
					fmt.Fprintf(w, ", %d flash operations\n", dec.Ops)
				}
			}); err != nil {
				return err
			}
			if !cut && !dec.Booted {
				return &exitError{code: 3, err: errors.New("no bootable image")}
			}
			return nil
		},
	}
	c.Flags().StringVar(&flash, "flash", "", "flash file (required)")
	c.Flags().Int64Var(&cutAfter, "cut-after", -1, "cut power at flash operation K (-1: no cut)")
	c.Flags().BoolVar(&torn, "torn", false, "the cut tears that program")
	c.Flags().BoolVar(&interrupt, "interrupt-erase", false, "the cut interrupts that erase")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	c.MarkFlagsMutuallyExclusive("torn", "interrupt-erase")
	_ = c.MarkFlagRequired("flash")
	return c
}

func newBootConfirmCmd() *cobra.Command {
	var flash string
	var asJSON bool
	c := &cobra.Command{
		Use:   "confirm",
		Short: "Confirm the image in trial state (raises the anti-rollback floor)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, f, err := devicefile.Open(flash)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := d.Confirm(); err != nil {
				return err
			}
			st, err := d.Status()
			if err != nil {
				return err
			}
			return bootOut(cmd, asJSON, st, func(w io.Writer) {
				fmt.Fprintf(w, "version %d confirmed, floor %d\n", st.Active.Version, st.Floor)
			})
		},
	}
	c.Flags().StringVar(&flash, "flash", "", "flash file (required)")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	_ = c.MarkFlagRequired("flash")
	return c
}

func newBootInspectCmd() *cobra.Command {
	var flash string
	var asJSON bool
	c := &cobra.Command{
		Use:   "inspect",
		Short: "Show headers, trial state, floor and last revert reason",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, f, err := devicefile.Open(flash)
			if err != nil {
				return err
			}
			defer f.Close()
			st, err := d.Status()
			if err != nil {
				return err
			}
			return bootOut(cmd, asJSON, st, func(w io.Writer) {
				line := func(name string, im bootctl.ImageInfo) {
					if !im.Valid {
						fmt.Fprintf(w, "%-8s empty or invalid: %s\n", name, im.Error)
						return
					}
					fmt.Fprintf(w, "%-8s version %d, counter %d, %d bytes, sha256 %s %s\n",
						name, im.Version, im.SecurityCounter, im.Size, im.Digest, im.Campaign)
				}
				line("active", st.Active)
				for i, s := range st.Slots {
					line(fmt.Sprintf("slot %d", i), s)
				}
				fmt.Fprintf(w, "floor %d, trial %v (%d of %d boots), last action %s", st.Floor, st.Trial, st.TrialBoots, st.TrialLimit, st.LastAction)
				if st.LastReason != "" {
					fmt.Fprintf(w, ": %s", st.LastReason)
				}
				fmt.Fprintln(w)
				if st.Pending != "" {
					fmt.Fprintf(w, "pending: %s\n", st.Pending)
				}
			})
		},
	}
	c.Flags().StringVar(&flash, "flash", "", "flash file (required)")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	_ = c.MarkFlagRequired("flash")
	return c
}

func newBootCombineCmd() *cobra.Command {
	var (
		bootPath, appPath, out, keyHex, campaign, envPath string
		slots                                             int
		slotSize, bootSize, appOffset                     int64
		version, counter                                  uint64
		asJSON                                            bool
	)
	c := &cobra.Command{
		Use:   "combine",
		Short: "Merge a bootloader and an application into one full flash image",
		Long: `combine writes a raw flash image (erased bytes are 0xFF): the bootloader at
the start, the application region (header with the device's tag, then the
image) right after it, empty slots and status area. It refuses a layout
where the application would not start right after the bootloader
(--app-offset other than --boot-size), regions that overlap or are not on
a sector boundary, and a bootloader larger than its region. With
--envelope (the application's signed SUIT envelope) the image is one for
a secure-boot device. ` + "`firmcast boot init --from`" + ` turns it into a device.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			g, l, appOffset, err := factoryLayout(slots, slotSize, bootSize, appOffset)
			if err != nil {
				return err
			}
			key, err := parseDeviceKey(keyHex)
			if err != nil {
				return err
			}
			boot, err := os.ReadFile(bootPath)
			if err != nil {
				return fmt.Errorf("--bootloader: %w", err)
			}
			app, err := os.ReadFile(appPath)
			if err != nil {
				return fmt.Errorf("--app: %w", err)
			}
			var env []byte
			if envPath != "" {
				if env, err = os.ReadFile(envPath); err != nil {
					return fmt.Errorf("--envelope: %w", err)
				}
			}
			img, err := bootctl.Combine(g, l, bootctl.CombineInput{Bootloader: boot, App: app, DeviceKey: key,
				Info: bootctl.CandidateInfo{Version: version, SecurityCounter: counter, Campaign: campaign, Envelope: env}})
			if err != nil {
				return err
			}
			if err := atomicfile.WriteFile(out, img, 0o600); err != nil {
				return err
			}
			res := map[string]any{"out": out, "size": len(img), "geometry": g, "layout": l,
				"app_digest": bootctl.Digest(sha256.Sum256(app))}
			return bootOut(cmd, asJSON, res, func(w io.Writer) {
				fmt.Fprintf(w, "wrote %s: %d bytes (bootloader %d bytes, application %d bytes at %#x)\n",
					out, len(img), len(boot), len(app), appOffset)
			})
		},
	}
	f := c.Flags()
	f.StringVar(&bootPath, "bootloader", "", "bootloader image (required)")
	f.StringVar(&appPath, "app", "", "application image (required)")
	f.StringVar(&out, "out", "", "output flash image (required)")
	f.StringVar(&keyHex, "device-key", "", "per-device HMAC key in hex (required)")
	f.Uint64Var(&version, "version", 0, "application version")
	f.Uint64Var(&counter, "security-counter", 0, "application security counter")
	f.StringVar(&campaign, "campaign", "", "campaign id")
	f.StringVar(&envPath, "envelope", "", "the application's signed SUIT envelope, stored in its header (secure boot)")
	f.IntVar(&slots, "slots", 2, "number of candidate slots")
	f.Int64Var(&slotSize, "slot-size", 0, "bytes per slot (required)")
	f.Int64Var(&bootSize, "boot-size", bootBootSectors*bootSectorSize, "bytes reserved for the bootloader")
	f.Int64Var(&appOffset, "app-offset", -1, "flash offset of the application region; -1: right after the bootloader")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	for _, n := range []string{"bootloader", "app", "out", "device-key", "slot-size"} {
		_ = c.MarkFlagRequired(n)
	}
	return c
}
