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
		Short: "Upload and list firmware images",
		Long: `Images are stored content-addressed by SHA-256, with their chunk table,
on the server's JetStream object store.`,
	}
	a.add(c)
	var name string
	up := &cobra.Command{
		Use:   "upload FILE",
		Short: "Upload an image (shows a progress bar)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			img, err := uploadFileNamed(cmd.Context(), cl, args[0], name, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if a.json {
				return printAPIJSON(cmd.OutOrStdout(), img)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s  %d bytes, %d chunks of %d\n", img.Digest, img.Size, img.Chunks, img.ChunkSize)
			return nil
		},
	}
	up.Flags().StringVar(&name, "name", "", "image name (default: the file name)")
	list := apiListCmd(a, "image list", "list", "List stored images",
		func(ctx context.Context, cl *publisher.Client) ([]publisher.Image, error) { return cl.Images(ctx) },
		[]string{"DIGEST", "NAME", "SIZE", "CHUNKS", "UPLOADED"},
		func(i publisher.Image) []string {
			return []string{i.Digest, i.Name, fmt.Sprint(i.Size), fmt.Sprint(i.Chunks), i.Uploaded.Format(time.RFC3339)}
		})
	c.AddCommand(up, list)
	return c
}

func uploadFile(ctx context.Context, cl *publisher.Client, path string, progress io.Writer) (publisher.Image, error) {
	return uploadFileNamed(ctx, cl, path, "", progress)
}

// uploadFileNamed uploads a file with a progress bar on progress.
func uploadFileNamed(ctx context.Context, cl *publisher.Client, path, name string, progress io.Writer) (publisher.Image, error) {
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
	img, err := cl.UploadImage(ctx, name, body)
	if err != nil {
		bar.Abort(false)
		pr.Wait()
		return publisher.Image{}, fmt.Errorf("image upload: %w", err)
	}
	bar.SetTotal(-1, true)
	pr.Wait()
	return img, nil
}
