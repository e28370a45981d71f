"""The camera's settings: everything that shapes the live loop, validated where it is made.

Kept apart from :mod:`.camera` (the loop) so the tool, the service and the benchmarks read the
valid choices (``PROPOSALS``, ``BACKGROUNDS``, ``VERIFY``) and the defaults from one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .options import QueryOptions
from .rerank import RerankConfig
from .tracking import Box

__all__ = ["BACKGROUNDS", "PROPOSALS", "VERIFY", "CameraConfig"]

PROPOSALS = ("full", "roi", "grid", "foreground", "split", "windows")
BACKGROUNDS = ("table", "mog2")
VERIFY = ("auto", "sift", "orb", "none")


@dataclass
class CameraConfig:
    """Everything that shapes the live loop; defaults suit a fixed camera over a table.

    ``proposals``: ``windows`` (default) separates touching items by candidate-guided windows in
    each foreground blob (best on touching items in ``tools/bench.py --suite camera_table``; a blob
    no wider than ``aspect_slack`` x the item it names is that one item, so a lone item is never
    cut in two); ``foreground`` takes each blob as one item; ``split`` splits the blob's mask;
    ``full``, ``roi``, ``grid`` are fixed.
    ``background``: ``table`` follows light, shadows and pans; ``mog2`` is OpenCV's MOG2.
    """

    proposals: str = "windows"
    roi: Box | None = None
    grid: tuple[int, int] = (2, 2)
    min_area: float = 0.01  # foreground blobs smaller than this share of the frame are ignored
    max_crops: int = 8  # blobs per frame, at most
    pad: float = 0.08  # context around each box, as a share of its size
    ema: float = 0.5  # weight of the newest frame's scores
    switch_frames: int = 3  # consecutive frames a new label must win before it replaces the old one
    switch_margin: float = 0.03  # ... and by at least this much over the current label's smoothed score
    appear_frames: int = 1  # frames a new track's first label must win before it is shown
    leave_frames: int = 10  # frames a track coasts without a box (keeping its label) before it leaves
    edge_leave: int | None = 2  # ... but a track hidden within this many px of the frame's edge went out of view (lifted away): it leaves at once, and an item put down there is not given its name (None: off)
    hold_frames: int = 5  # a named track that lost its box is still shown this many frames while its place is still covered (a hand over it; 0: hidden at once)
    hold_fill: float = 0.6  # ... covered: this share of its box is foreground
    hold_age: int = 10  # ... only a track this many frames old (a short-lived one may be a phantom on a seam)
    iou_match: float = 0.25
    lost_to_unknown: bool = True  # a track whose name went to another track reads unknown at once, and a next name must win switch_frames frames like any challenger (False: its next best name at once)
    name_weight: float = 4.0  # a track takes a box by IoU less this x how far the box scores its item under the box's best item: of two overlapping boxes, the one showing its item (2.0, the last stop's: hand wrong-label frames 2.2% vs 1.9% with refit_width, #16)
    hidden_prior: bool = True  # a track born where a hidden named track coasts (IoU >= iou_match) counts that item's name as its own (switch_margin) when it is first named: not a lookalike's name taken from across the table (off: hand seeds with 2+ switches 5 -> 6 of 20, #16)
    name_gate: float | None = 0.15  # a named track never takes a box that scores a hidden track's item this much above its own: that item is back (None: off)
    motion_ema: float = 0.3  # a track's velocity while seen (EMA weight of the newest frame): a hidden track coasts on with it (0: it stays put)
    coast_shape: float | None = 1.6  # a hidden track takes back, and a named one takes a box no window named (a hand), only a box at most this much wider or narrower
    threshold: float | None = None  # default: the gallery's, but at least ``min_score``
    colour: float = 0.5  # weight of the colour cue, on a table background (it needs the object's pixels): of each crop's 10 best items, each falls this x how much worse its colours (HSV, relit to the light the table was learnt in) match than the best-matching one's; an item's colours come from its photos with a plain background (0: off; #16: lookalike bottles of one brand in two colours swapped names)
    min_score: float = 0.5  # a name needs this cosine at least, whatever the gallery's threshold
    query: QueryOptions = field(default_factory=QueryOptions)  # framing of each crop (zoom, multi-crop)
    rerank: RerankConfig | None = None  # geometric verification of every crop's top candidates, every frame
    verify: str = "auto"  # per-track verification (once at birth and on a challenge): the gallery's stored features
    verify_top: int = 3
    verify_lag: int = 2  # verification on a worker thread, its result applied this many frames later (0: inline, in the frame)
    rebox_iou: float = 0.5  # a track whose box jumps (IoU with its last box below this) is verified again
    verify_window: float = 0.1  # the cached bonus counts for items this close to the track's best embedding score
    warmup_frames: int = 10  # foreground: frames of the empty scene to learn the background from
    bg_learning_rate: float = 0.0005  # mog2: background adaptation after the warm-up
    background: str = "table"
    window_widths: tuple[float, ...] = (0.45, 0.7, 1.0)  # windows: widths, x the items' height (the blob's, see window_tall)
    window_tall: float | None = 0.8  # windows: a blob whose median column is under this x its box's height has its items' height from the columns (None: the box's)
    window_stride: float = 0.34  # windows: step between positions, x the window's width
    window_positions: int = 6  # windows: positions per width, at most
    nms: float = 0.5  # windows: picked windows overlap by at most this share of the narrower one's width
    aspect_slack: float | None = 1.25  # windows: a blob no wider than this x the width of the item it names is one item (None: off)
    refresh_frames: int = 5  # windows: a window's scores are reused (moved with its blob) for at most this many frames
    shape_slack: float | None = 1.75  # windows: a window this much wider (narrower) than the item it names is never that item (1.5 and 2.0: worse, see #16)
    part_margin: float | None = 0.03  # windows: two neighbouring windows that fit in one item are that item when one scores the other's item within this of its own best (None: off)
    seam_cover: float | None = 0.7  # windows: a picked window whose two picked neighbours cover more than this share of its width is a seam between them, not an item (None: off; #16: a 55 px window 38% under each neighbour named a distractor carton for 9 frames)
    keep_bonus: float = 0.1  # windows: last frame's items count this much more when a blob's items are picked
    search_on_change: bool = False  # windows: a blob that grew or shrank has its stale windows re-scored at once, over frame_ms
    stale_change: float | None = None  # windows: a pooled window whose 8x8 thumbnail changed by more than this (1 - correlation) since it was embedded is stale (a hand came or went): an item's is embedded again now, another window dropped (None: off; 0.5: hand 0.955 -> 0.985 and wrong-label frames 2.3% -> 0.2%, but swap recall 0.908 -> 0.860 and a distractor flashed for a frame after the hand in tests/matching/test_camera_table.py, #16)
    refit_width: float | None = 0.35  # windows: an item's window whose width is off every window its blob makes now by more than this share (made when its items looked another height) is fitted again: the nearest window, embedded now (None: off; 0.2 and 0.5: #16)
    register_px: int | None = 32  # windows: a blob's windows move as its items' grey patches moved since last frame (searched this far across, a quarter up and down) where that fits them clearly better than the blob's edges do, which a hand drags along (None: the edges; #16)
    anchor_every: int = 3  # windows: last frame's items in a steady blob are embedded again every this many frames (the stalest first; 1 and 2: #16)
    explore_min: int = 3  # windows: windows explored a frame beyond the items embedded again, at least
    crop_budget: int | None = None  # windows: crops a frame, fixed (None: from frame_ms and the embedder's speed at start)
    frame_ms: float | None = 30.0  # windows: aim each frame at this: windows embedded beyond last frame's items, from the measured ms per crop (None: all stale ones)
    mask_fill: int | None = 128  # table background: paint the empty table in each crop this grey (None: keep it)
    square: bool = True  # pad each crop to a square (grey) so a narrow window is not stretched (off: touching COIL recall 0.79 vs 0.94)

    def __post_init__(self) -> None:
        if self.proposals not in PROPOSALS:
            raise ValueError(f"proposals {self.proposals!r} is not one of {', '.join(PROPOSALS)}")
        if self.proposals == "roi" and self.roi is None:
            raise ValueError("proposals='roi' needs roi=(x, y, w, h)")
        if self.crop_budget is not None and self.crop_budget < 1:
            raise ValueError(f"crop_budget must be >= 1 (or None: from frame_ms), got {self.crop_budget}")
        if self.frame_ms is not None and not self.frame_ms > 0:
            raise ValueError(f"frame_ms must be > 0 (or None: no budget), got {self.frame_ms}")
        if not self.colour >= 0:
            raise ValueError(f"colour must be >= 0 (0: off), got {self.colour}")
        if not 0 < self.ema <= 1:
            raise ValueError(f"ema must be in (0, 1], got {self.ema}")
        if self.hold_frames < 0 or not 0 < self.hold_fill <= 1:
            raise ValueError(f"hold_frames must be >= 0 and hold_fill in (0, 1], got {self.hold_frames}, {self.hold_fill}")
        if not 0 <= self.motion_ema <= 1:
            raise ValueError(f"motion_ema must be in [0, 1] (0: hidden tracks stay put), got {self.motion_ema}")
        if self.name_weight < 0:
            raise ValueError(f"name_weight must be >= 0, got {self.name_weight}")
        if self.name_gate is not None and self.name_gate < 0:
            raise ValueError(f"name_gate must be >= 0 (or None: off), got {self.name_gate}")
        if self.stale_change is not None and not 0 < self.stale_change <= 2:
            raise ValueError(f"stale_change must be in (0, 2] (1 - correlation; or None: off), got {self.stale_change}")
        if self.refit_width is not None and not self.refit_width > 0:
            raise ValueError(f"refit_width must be > 0 (or None: off), got {self.refit_width}")
        if self.seam_cover is not None and not 0 < self.seam_cover <= 1:
            raise ValueError(f"seam_cover must be in (0, 1] (or None: off), got {self.seam_cover}")
        if self.register_px is not None and not self.register_px >= 2:
            raise ValueError(f"register_px must be >= 2 px (or None: the blob's edges), got {self.register_px}")
        if self.edge_leave is not None and self.edge_leave < 0:
            raise ValueError(f"edge_leave must be >= 0 px (or None: off), got {self.edge_leave}")
        if self.part_margin is not None and self.part_margin < 0:
            raise ValueError(f"part_margin must be >= 0 (or None: off), got {self.part_margin}")
        if self.window_tall is not None and not 0 < self.window_tall <= 1:
            raise ValueError(f"window_tall must be in (0, 1] (or None: the box's height), got {self.window_tall}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background {self.background!r} is not one of {', '.join(BACKGROUNDS)}")
        if self.verify not in VERIFY:
            raise ValueError(f"verify {self.verify!r} is not one of {', '.join(VERIFY)}")
