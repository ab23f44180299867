package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/firmcast/firmcast/publisher"
)

func newImageCmd() *cobra.Command {
	a := &apiFlags{}
	c := &cobra.Command{
		Use:   "image",
		Short: "Upload, list and delete firmware images, and make deltas",
		Long: `Images are stored content-addressed by SHA-256, with their chunk table,
in the server's JetStream image stream (one message per chunk).`,
	}
	a.add(c)
	var up publisher.ImageUpload
	upload := &cobra.Command{
		Use:   "upload FILE",
		Short: "Upload an image (shows a progress bar)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			img, err := uploadFileWith(cmd.Context(), cl, args[0], up, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if a.json {
				return printAPIJSON(cmd.OutOrStdout(), img)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s  %d bytes, %d chunks of %d", img.Digest, img.Size, img.Chunks, img.ChunkSize)
			if img.Version != "" {
				fmt.Fprintf(cmd.OutOrStdout(), ", version %s", img.Version)
			}
			if img.SecurityVersion != 0 {
				fmt.Fprintf(cmd.OutOrStdout(), ", security version %d", img.SecurityVersion)
			}
			if img.Encrypted {
				fmt.Fprint(cmd.OutOrStdout(), ", encrypted (the digest names the ciphertext)")
			}
			fmt.Fprintln(cmd.OutOrStdout())
			return nil
		},
	}
	upload.Flags().StringVar(&up.Name, "name", "", "image name (default: the file name)")
	upload.Flags().StringVar(&up.Version, "version", "", "the image's own version, semantic (1.4.2): campaigns to an older image than a target runs need --allow-downgrade")
	upload.Flags().Uint64Var(&up.SecurityVersion, "security-version", 0, "anti-rollback security version signed into its manifests; raise it on purpose when older versions must never run again (default: none, devices keep their floor)")
	addEncryptFlags(upload, &up)
	list := apiListCmd(a, "image list", "list", "List stored images",
		func(ctx context.Context, cl *publisher.Client) ([]publisher.Image, error) { return cl.Images(ctx) },
		[]string{"DIGEST", "NAME", "SIZE", "CHUNKS", "UPLOADED"},
		func(i publisher.Image) []string {
			return []string{i.Digest, i.Name, fmt.Sprint(i.Size), fmt.Sprint(i.Chunks), i.Uploaded.Format(time.RFC3339)}
		})
	c.AddCommand(upload, list, newImageDeleteCmd(a), newImageDeltaCmd(a))
	return c
}

func uploadFile(ctx context.Context, cl *publisher.Client, path string, progress io.Writer) (publisher.Image, error) {
	return uploadFileWith(ctx, cl, path, publisher.ImageUpload{}, progress)
}

// uploadFileWith uploads a file with a progress bar on progress.
func uploadFileWith(ctx context.Context, cl *publisher.Client, path string, up publisher.ImageUpload, progress io.Writer) (publisher.Image, error) {
	name := up.Name
	f, err := os.Open(path)
	if err != nil {
		return publisher.Image{}, fmt.Errorf("image upload: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return publisher.Image{}, fmt.Errorf("image upload: %w", err)
	}
	if name == "" {
		name = filepath.Base(path)
	}
	pr := mpb.NewWithContext(ctx, mpb.WithOutput(progress), mpb.WithWidth(40), mpb.WithAutoRefresh())
	bar := pr.AddBar(fi.Size(),
		mpb.PrependDecorators(decor.Name("upload "+name+" ")),
		mpb.AppendDecorators(decor.CountersKibiByte("% .1f / % .1f")))
	body, err := bar.ProxyReader(f)
	if err != nil {
		return publisher.Image{}, fmt.Errorf("image upload: %w", err)
	}
	up.Name = name
	img, err := cl.UploadImageWith(ctx, up, body)
	if err != nil {
		bar.Abort(false)
		pr.Wait()
		return publisher.Image{}, fmt.Errorf("image upload: %w", err)
	}
	bar.SetTotal(-1, true)
	pr.Wait()
	return img, nil
}
