// Package deviceagent is the on-device update client: it receives notices,
// verifies manifests, fetches the image through fetcher into a bootctl
// candidate slot, reboots into the bootloader and confirms the new image
// after its health check. Its state is persisted before each effect.
//
// deviceagent never imports publisher.
package deviceagent
