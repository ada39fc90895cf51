"""``fpdeep train --chips N --backend verilator``: whole epochs on the simulated cluster.

The command side of :func:`fpdeep.sim.train_cluster.train_cluster`: it plans the
network for the gateware as ``fpdeep sim`` does (:func:`.sim_cmd.plan_for`),
elaborates the plan, and prints an epoch table on stdout (the gateware's training
loss and accuracy, the held-out accuracy, the weights compared, the link replays),
a progress bar on stderr (a line per tenth of the run when stderr is not a
terminal), the simulation's figures, and writes the loss and accuracy curve with
``--curve FILE.png`` (atomically; not on failure). Exit status 0 when every weight
and counter equals the integer reference at every epoch's end, 1 (naming the first
difference) otherwise.
"""

import sys
import time
from types import SimpleNamespace

from ..plan.errors import FpdeepError

__all__ = ["check_options", "run", "ProgressBar", "write_curve"]


def check_options(args):
    """Refuse options that do not go together (one line each); fill in the defaults.

    Returns True for a cluster run, False for the reference alone (as before).
    """
    cluster = args.chips is not None or args.backend is not None
    if not cluster:
        for option, value in (("--link-ber", args.link_ber), ("--curve", args.curve)):
            if value is not None:
                raise FpdeepError(f"{option} needs the simulated cluster: add --chips N "
                                  f"(and --backend verilator)")
        return False
    if args.reference not in (None, "int"):
        raise FpdeepError(f"--reference {args.reference}: the gateware trains against the "
                          f"integer reference only; drop --reference or give int")
    chosen = args.backend is None     # said once the options are known good
    if chosen:
        args.backend = "verilator"
    args.chips = args.chips or 1
    if args.link_ber and args.chips < 2:
        raise FpdeepError(f"--link-ber {args.link_ber:g} needs links: --chips 2 or more")
    if args.curve is not None and not args.curve.lower().endswith(".png"):
        raise FpdeepError(f"--curve {args.curve!r}: the curve is a PNG; name it FILE.png")
    if chosen:
        print(f"fpdeep train: --chips {args.chips} without --backend: training in Verilator",
              file=sys.stderr)
    if args.backend == "pysim" and args.chips > 1:
        print(f"fpdeep train: warning: --backend pysim on {args.chips} chips is slow (a few "
              f"samples a second); --backend verilator is about 100 times faster",
              file=sys.stderr)
    return True


class ProgressBar:
    """Progress on ``stream``: a redrawn bar on a terminal, else a line per tenth of the run."""

    def __init__(self, stream, total, epochs):
        self.stream, self.total, self.epochs = stream, total, epochs
        self.tty = stream.isatty()
        self.start = None       # (time, samples done) at the first call: the rate excludes builds
        self.last = None        # the last epoch's figures
        self.shown = -1         # tenths of the run shown (not a terminal)
        self.drawn = 0.0        # time of the last redraw (a terminal)
        self.open = False       # a bar drawn and not yet ended with a newline

    def epoch(self, figures):
        self.last = figures

    def _text(self, done):
        if self.start is None:
            self.start = (time.perf_counter(), done)
        seconds = time.perf_counter() - self.start[0]
        epoch = min(self.epochs, done * self.epochs // self.total + 1)
        text = f"epoch {epoch}/{self.epochs}, {done}/{self.total} samples"
        if done > self.start[1]:
            text += f", {(done - self.start[1]) / seconds:.0f} samples/s"
        if self.last is not None:
            e = self.last
            text += (f"; epoch {e.epoch}: loss {e.train_loss:.3f} bits, accuracy "
                     f"{e.train_accuracy:.3f}, held-out {e.test_accuracy:.3f}")
        return text

    def __call__(self, done, total):
        if self.tty:
            now = time.perf_counter()
            if now - self.drawn < 0.2 and done < total:
                return
            self.drawn = now
            width = 24
            filled = width * done // total
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                              f"{self._text(done)}\x1b[K")
            self.open = done < total
            if not self.open:
                self.stream.write("\n")
            self.stream.flush()
        else:
            tenth = 10 * done // total
            if tenth > self.shown:
                self.shown = tenth
                print(f"fpdeep train: {self._text(done)}", file=self.stream, flush=True)

    def close(self):
        """End a bar left mid-line (a run stopped early)."""
        if self.tty and self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False


def write_curve(path, training, title):
    """The loss and accuracy per epoch of ``training`` as a PNG at ``path``, atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from ..plan.files import atomic_output
    epochs = [e.epoch for e in training.epochs]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_ax.plot(epochs, [e.train_loss for e in training.epochs], "o-", label="training")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("cross-entropy (bits)")
    loss_ax.set_title("loss")
    loss_ax.legend()
    acc_ax.plot(epochs, [e.train_accuracy for e in training.epochs], "o-", label="training")
    acc_ax.plot(epochs, [e.test_accuracy for e in training.epochs], "s-", label="held-out")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_ylim(0, 1)
    acc_ax.set_title("accuracy")
    acc_ax.legend(loc="lower right")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        with atomic_output(path, what="curve") as temp:
            fig.savefig(temp, dpi=100, format="png")
    finally:
        plt.close(fig)


def run(args, network):
    """Train on the cluster of ``args`` (checked by :func:`check_options`); the exit status."""
    from ..plan.files import output_target
    from ..rtl.elaborate import chain_from_plan
    from ..sim.data import training_split
    from ..sim.train_cluster import train_cluster
    from .sim_cmd import plan_for
    if args.curve:
        output_target(args.curve, what="curve")
    # The data first: a bad file or count is refused before planning.
    training_split(network, data=args.data, train_samples=args.train_samples, batch=args.batch)
    plan = plan_for(SimpleNamespace(plan=None, chips=args.chips, board=None,
                                    batch_size=args.batch), network)
    layout = chain_from_plan(plan, network)
    link_ber = args.link_ber or 0.0
    simulator = "Verilator" if args.backend == "verilator" else "Amaranth simulator"
    bar = {}

    def start(training):
        batches = training.train_samples // args.batch
        print(f"fpdeep train: {training.network} on {training.chips} chip(s), {simulator}, "
              f"data: {training.source}: {training.train_samples} training / "
              f"{training.test_samples} held-out samples; {args.epochs} epochs of {batches} "
              f"batches of {args.batch}; lr {args.lr}, momentum {args.momentum}, seed "
              f"{args.seed}; link bit-error rate {link_ber:g}", flush=True)
        print(f"{'epoch':>5} {'loss':>7} {'train':>6} {'held-out':>8} {'weights':>9} "
              f"{'replays':>7} {'seconds':>7}", flush=True)
        whole = batches * args.batch
        bar["bar"] = ProgressBar(sys.stderr, whole * args.epochs, args.epochs)
        if args.backend == "verilator":
            print("  building or finding the Verilator model ...", file=sys.stderr, flush=True)

    def epoch(e):
        bar["bar"].epoch(e)
        print(f"{e.epoch:5d} {e.train_loss:7.4f} {e.train_accuracy:6.4f} "
              f"{e.test_accuracy:8.4f} {e.weights[0]:>4}/{e.weights[1]:<4} {e.replays:7d} "
              f"{e.seconds:7.1f}", flush=True)

    training = train_cluster(plan, layout, network, epochs=args.epochs, lr=args.lr,
                             momentum=args.momentum, seed=args.seed,
                             train_samples=args.train_samples, data=args.data,
                             backend=args.backend, link_ber=link_ber, link_seed=args.seed,
                             progress=lambda done, total: bar["bar"](done, total),
                             on_start=start, on_epoch=epoch)
    if "bar" in bar:
        bar["bar"].close()
    if training.mismatch:
        print(f"fpdeep train: the gateware differs from the integer reference "
              f"{training.mismatch}", file=sys.stderr)
        return 1
    result = training.result
    equal, total, first = training.final_weights
    print()
    print(f"weights: {equal}/{total} equal the integer reference bit for bit"
          + ("" if equal == total else f"; first difference {first}"))
    print(f"held-out accuracy: {training.epochs[-1].test_accuracy:.4f} after "
          f"{len(training.epochs)} epochs")
    print(f"simulated: {result.clocks} cycles ({result.cycles_per_sample:.1f} per sample) "
          f"in {result.wall_seconds:.1f} s, {result.clocks / max(result.wall_seconds, 1e-9):.0f} "
          f"cycles/s; wall time {training.wall_seconds:.1f} s")
    if result.link_status:
        ends = ", ".join(f"link {k} {'down' if end == 'a' else 'up'} {s['replays']}"
                         for (k, end), s in sorted(result.link_status.items()))
        bad = sum(s["bad_frames"] for s in result.link_status.values())
        timeouts = sum(s["timeouts"] for s in result.link_status.values())
        print(f"links: {training.replays} replays ({ends}); {bad} bad frames dropped, "
              f"{timeouts} replay timeouts (16-bit counters at the end)")
    build = training.verilator_build
    if build is not None:
        print(f"Verilator model: {build.directory} ("
              + ("found in the cache" if build.cached else f"built in {build.build_seconds:.1f} s")
              + f"; Verilog conversion {build.convert_seconds:.1f} s)")
    if args.curve:
        write_curve(args.curve, training,
                    f"{training.network} on {training.chips} chips ({simulator}), link BER "
                    f"{link_ber:g}: bit-exact at every epoch's end")
        print(f"curve: {args.curve}")
    return 0 if equal == total else 1
