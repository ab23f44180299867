// Package bootctl is the bootloader module over a simulated NOR flash.
//
// bootctl knows no network and imports no transport.
package bootctl
