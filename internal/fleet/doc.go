// Package fleet simulates a fleet of devices running the real firmcast
// device agent, in one process or shared out among several, and the
// backend stack they talk to. It
// is shared by `firmcast demo` (everything in-process), `firmcast sim` (the
// fleet against a running server) and `firmcast bench` (a campaign next to
// a raw broker fan-out baseline).
//
// Who does what:
//
//   - The backend (brokers, publisher, device credentials) is built by
//     internal/stack, as `firmcast serve` builds it; devices registered
//     through it authenticate from the publisher's registry, each with its
//     own secret under the broker's access policy.
//
//   - Fleet (fleet.go) prepares N devices, each with its own directory: a
//     sparse, file-backed simulated flash (bootctl.CreateFileFlash stores
//     bytes inverted, so erased flash is a hole), a bootctl device with its
//     own MAC key, a state directory, and the factory image installed and
//     confirmed through bootctl. Run connects each device with its own
//     credentials and runs a deviceagent.Agent until ctx ends. Devices
//     chosen by Config.FailRate fail their post-boot self-test, so the
//     bootloader rolls them back.
//
//   - Run (demo.go) ties both together: it builds the two images, prepares
//     the fleet, uploads v2 and runs a phased campaign, and returns a
//     Summary read from the devices themselves (bootctl status and agent
//     state), not only from the backend's view.
//
//   - A campaign run (RunCampaign) sees the fleet as a Sim (tally.go): a
//     Fleet in this process, or Procs (procs.go), which starts child
//     processes that each run a share of one fleet (FleetConfig.First,
//     FleetSize) with ServeShare (share.go) and report to the parent in
//     JSON lines over their stdin and stdout: tallies of device states,
//     and on request their outcome. Tallies and outcomes of the shares
//     add up. When one child fails every child is killed and the run
//     fails (ErrSimFailed); when the parent dies the children's stdin
//     closes and they stop.
//
//   - RunBench (bench.go) and RunIdleBench (benchidle.go) are the
//     harness of `firmcast bench` and `firmcast bench idle`: a campaign
//     beside the raw broker fan-out of the same bytes (RawFanout, raw.go),
//     repeated Runs times with median and range; and the broker memory of
//     N idle agents (IdleFleet, idle.go), brokers run as processes through
//     internal/stack. Before each side's clock starts, the files it will
//     write (the raw side's, the devices' free slots) are written full of
//     what they read as (TouchRawFiles, Fleet.TouchFreeSlots in
//     touch_linux.go), so that neither side pays the host for pages a
//     virtual machine's balloon took back (BenchConfig.ColdPages).
//
// Nothing here is a fake: the agents, bootloader, publisher and brokers
// are the production code; only the flash is simulated.
//
// fleet imports publisher and deviceagent (it plays both sides); neither of
// them imports fleet.
package fleet
