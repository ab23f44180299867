package publisher

import (
	"context"
	"fmt"
	"strings"

	"golang.org/x/mod/semver"

	"github.com/firmcast/firmcast/schemas/suit"
)

// Downgrades.
//
// The server signer numbers manifests by signing time, so re-signing an
// old image yields a manifest every anti-rollback check on the device
// accepts. What a campaign installs is therefore compared, before it is
// created, with what each target runs (Device.Image, recorded when the
// device confirmed it): an image older by its own version (Image.Version,
// semantic versioning) or by its security version than the target's is a
// downgrade, which needs CampaignSpec.AllowDowngrade and is audited
// ("campaign.downgrade"). This guards against an operator's mistake, not
// against a compromised signer.

// downgrades returns, for each target that runs an image newer than img
// (by version, or by security version, env's own when it sets one), a
// line saying so. Targets whose running image is unknown, or either
// version unset, are not judged.
func (p *Publisher) downgrades(ctx context.Context, targets []string, img Image, env []byte) ([]string, error) {
	newSV := img.SecurityVersion
	if m, err := suit.Decode(env); err == nil {
		if sv, ok, err := m.SecurityVersion(); err != nil {
			return nil, fmt.Errorf("%w: envelope: %v", ErrInvalid, err)
		} else if ok {
			newSV = sv
		}
	}
	want := make(map[string]bool, len(targets))
	for _, t := range targets {
		want[t] = true
	}
	devs, err := p.deviceRecords(ctx)
	if err != nil {
		return nil, err
	}
	running := map[string]*Image{}
	var out []string
	for _, d := range devs {
		if !want[d.ID] || d.Image == "" || d.Image == img.Digest {
			continue
		}
		cur, ok := running[d.Image]
		if !ok {
			if ri, err := p.Image(ctx, d.Image); err == nil {
				cur = &ri
			}
			running[d.Image] = cur
		}
		if cur == nil {
			continue
		}
		switch {
		case img.Version != "" && cur.Version != "" && semver.Compare(img.Version, cur.Version) < 0:
			out = append(out, fmt.Sprintf("%s runs %s, the image is %s", d.ID, cur.Version, img.Version))
		case newSV < cur.SecurityVersion:
			out = append(out, fmt.Sprintf("%s runs security version %d, the image has %d", d.ID, cur.SecurityVersion, newSV))
		}
	}
	return out, nil
}

// summarize joins the first n lines and says how many more there are.
func summarize(lines []string, n int) string {
	if len(lines) <= n {
		return strings.Join(lines, "; ")
	}
	return strings.Join(lines[:n], "; ") + fmt.Sprintf("; and %d more", len(lines)-n)
}
