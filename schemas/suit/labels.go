package suit

import "fmt"

// Envelope and manifest keys (draft-ietf-suit-manifest-34 section 8 and
// IANA section 11).
const (
	keyDelegation     = 1 // envelope (draft-ietf-suit-trust-domains)
	keyAuthentication = 2 // envelope
	keyManifest       = 3 // envelope

	keyManifestVersion   = 1
	keySequenceNumber    = 2
	keyCommon            = 3
	keyReferenceURI      = 4
	keyManifestComponent = 5 // trust-domains
	keyValidate          = 7
	keyLoad              = 8
	keyInvoke            = 9
	keyCoswid            = 14 // update-management
	keyDependencyRes     = 15 // trust-domains
	keyPayloadFetch      = 16
	keyInstall           = 20
	keyText              = 23
	keyUninstall         = 24 // trust-domains

	keyDependencies   = 1 // common
	keyComponents     = 2 // common
	keySharedSequence = 4 // common
)

// Digest algorithm identifiers (COSE).
const (
	AlgSHA256   int64 = -16
	AlgSHAKE128 int64 = -18
	AlgSHA384   int64 = -43
	AlgSHA512   int64 = -44
	AlgSHAKE256 int64 = -45
)

// Command labels (conditions and directives). The draft's general set,
// plus those of draft-ietf-suit-update-management and -trust-domains that a
// processor must at least recognise.
const (
	CondVendorID        int64 = 1
	CondClassID         int64 = 2
	CondImageMatch      int64 = 3
	CondUseBefore       int64 = 4 // update-management
	CondComponentSlot   int64 = 5
	CondCheckContent    int64 = 6
	CondDependencyInteg int64 = 7 // trust-domains
	CondIsDependency    int64 = 8 // trust-domains
	DirSetComponentIdx  int64 = 12
	CondAbort           int64 = 14
	DirTryEach          int64 = 15
	DirProcessDep       int64 = 11 // trust-domains
	DirWrite            int64 = 18
	DirSetParameters    int64 = 19 // trust-domains
	DirOverrideParams   int64 = 20
	DirFetch            int64 = 21
	DirCopy             int64 = 22
	DirInvoke           int64 = 23
	CondDeviceID        int64 = 24
	CondImageNotMatch   int64 = 25 // update-management
	CondMinBattery      int64 = 26 // update-management
	CondUpdateAuth      int64 = 27 // update-management
	CondVersion         int64 = 28 // update-management
	DirWait             int64 = 29 // update-management
	DirSwap             int64 = 31
	DirRunSequence      int64 = 32
	DirUnlink           int64 = 33 // trust-domains
)

// Parameter labels.
const (
	ParamVendorID        int64 = 1
	ParamClassID         int64 = 2
	ParamImageDigest     int64 = 3
	ParamUseBefore       int64 = 4 // update-management
	ParamComponentSlot   int64 = 5
	ParamStrictOrder     int64 = 12
	ParamSoftFailure     int64 = 13
	ParamImageSize       int64 = 14
	ParamContent         int64 = 18
	ParamEncryptionInfo  int64 = 19 // firmware-encryption
	ParamURI             int64 = 21
	ParamSourceComponent int64 = 22
	ParamInvokeArgs      int64 = 23
	ParamDeviceID        int64 = 24
	ParamMinBattery      int64 = 26
	ParamUpdatePriority  int64 = 27
	ParamVersion         int64 = 28
	ParamWaitInfo        int64 = 29

	// ParamFirmcast is firmcast's custom parameter (SUIT custom parameters
	// are negative integers): bstr .cbor ChunkInfo, i.e.
	// {1: chunk-size uint, 2: SUIT_Digest of the image's chunk table}.
	ParamFirmcast int64 = -257
	// ParamSecurityVersion is firmcast's security version (a custom
	// parameter): uint, at most MaxSecurityVersion. It is the image's
	// anti-rollback counter in the bootloader, raised on purpose by the
	// operator when a vulnerable version must never run again.
	ParamSecurityVersion int64 = -260
	// ParamFirmcastEncryption is firmcast's encrypted-image parameter (a
	// custom parameter, see ImageEncryption): bstr .cbor {1:
	// SUIT_Encryption_Info, 2: bstr .size 32 (keyed plaintext digest)}.
	ParamFirmcastEncryption int64 = -264
	// ParamFirmcastCodedTable is the SHA-256 of the image's coded chunk
	// table (a custom parameter): SUIT_Digest of the schemas.ChunkTable
	// that also commits parity chunks (Block > 0), for devices that speak
	// delivery protocol 2 (schemas.ProtocolCoded). ParamFirmcast keeps
	// naming the plain table, the one devices of protocol 1 take: an image
	// served with coded repair has both tables, and the manifest signs
	// both digests. Agents of protocol 1 keep a custom parameter they do
	// not know without acting on it, so they go on as before.
	ParamFirmcastCodedTable int64 = -265
)

// MaxSecurityVersion bounds ParamSecurityVersion: hardware monotonic
// counters are small (TPM counters step by one, eFuse counters are unary).
const MaxSecurityVersion = 1 << 16

// Reporting policy bits (SUIT_Rep_Policy).
const (
	RecordSuccess  uint64 = 1 << 0
	RecordFailure  uint64 = 1 << 1
	SysinfoSuccess uint64 = 1 << 2
	SysinfoFailure uint64 = 1 << 3
)

var commandNames = map[int64]string{
	CondVendorID: "condition-vendor-identifier", CondClassID: "condition-class-identifier",
	CondImageMatch: "condition-image-match", CondUseBefore: "condition-use-before",
	CondComponentSlot: "condition-component-slot", CondCheckContent: "condition-check-content",
	CondDependencyInteg: "condition-dependency-integrity", CondIsDependency: "condition-is-dependency",
	DirProcessDep: "directive-process-dependency", DirSetComponentIdx: "directive-set-component-index",
	CondAbort: "condition-abort", DirTryEach: "directive-try-each", DirWrite: "directive-write",
	DirSetParameters: "directive-set-parameters", DirOverrideParams: "directive-override-parameters",
	DirFetch: "directive-fetch", DirCopy: "directive-copy", DirInvoke: "directive-invoke",
	CondDeviceID: "condition-device-identifier", CondImageNotMatch: "condition-image-not-match",
	CondMinBattery: "condition-minimum-battery", CondUpdateAuth: "condition-update-authorized",
	CondVersion: "condition-version", DirWait: "directive-wait", DirSwap: "directive-swap",
	DirRunSequence: "directive-run-sequence", DirUnlink: "directive-unlink",
}

var paramNames = map[int64]string{
	ParamVendorID: "vendor-id", ParamClassID: "class-id", ParamImageDigest: "image-digest",
	ParamUseBefore: "use-before", ParamComponentSlot: "component-slot",
	ParamStrictOrder: "strict-order", ParamSoftFailure: "soft-failure", ParamImageSize: "image-size",
	ParamContent: "content", ParamEncryptionInfo: "encryption-info", ParamURI: "uri",
	ParamSourceComponent: "source-component", ParamInvokeArgs: "invoke-args",
	ParamDeviceID: "device-id", ParamMinBattery: "minimum-battery",
	ParamUpdatePriority: "update-priority", ParamVersion: "version", ParamWaitInfo: "wait-info",
	ParamFirmcast: "firmcast-chunks", ParamSecurityVersion: "firmcast-security-version",
	ParamFirmcastEncryption: "firmcast-encryption", ParamFirmcastCodedTable: "firmcast-coded-table",
}

// CommandName returns the draft's name of a command label, or "command N".
func CommandName(label int64) string {
	if n, ok := commandNames[label]; ok {
		return n
	}
	if label < 0 {
		return fmt.Sprintf("custom-command %d", label)
	}
	return fmt.Sprintf("command %d", label)
}

// ParamName returns the draft's name of a parameter label, or "parameter N".
func ParamName(label int64) string {
	if n, ok := paramNames[label]; ok {
		return n
	}
	return fmt.Sprintf("parameter %d", label)
}

// Sequence names, as used in reports and errors.
const (
	SeqShared       = "shared-sequence"
	SeqPayloadFetch = "payload-fetch"
	SeqInstall      = "install"
	SeqValidate     = "validate"
	SeqLoad         = "load"
	SeqInvoke       = "invoke"
)
