package deviceagent

import (
	"bytes"
	"fmt"

	"github.com/firmcast/firmcast/schemas"
)

// failedBefore refuses, before anything is downloaded, an image that
// failed on this device before: its bootloader reverted it (a trial that
// was not confirmed) and would skip it in any slot, so downloading it
// again would end in "bootloader did not start the new image". The report
// says so with CodeFailedBefore. A campaign that retries failed images on
// purpose (UpdateNotice.Retry) lifts the bootloader's rejection instead
// (bootctl.Device.Forgive), and the update goes on.
func (a *Agent) failedBefore(digest []byte) error {
	rej, ok, err := a.dev().Rejected()
	if err != nil {
		return transient(schemas.CodeInternal, err)
	}
	if !ok || !bytes.Equal(rej[:], digest) {
		return nil
	}
	a.mu.Lock()
	retry := a.st.Retry
	a.mu.Unlock()
	if !retry {
		return permanent(schemas.CodeFailedBefore, fmt.Errorf(
			"image %s failed on this device before (its bootloader reverted it); not downloaded again: a campaign that retries failed images (--retry-failed) installs it", short(digest)))
	}
	if err := a.dev().Forgive(rej); err != nil {
		return transient(schemas.CodeInternal, err)
	}
	a.log.Info("retrying an image that failed on this device before", "image", schemas.DigestHex(digest))
	return nil
}
