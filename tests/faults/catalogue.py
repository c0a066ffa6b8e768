"""The fault catalogue: every case the suite tries, what is done and the exact expected outcome.

``reliability.py`` renders it, with the outcome of each test, as ``docs/reliability.md``;
``test_catalogue.py`` checks that every case has a test and every test a case.
"""

from __future__ import annotations

from typing import NamedTuple


class Case(NamedTuple):
    category: str
    done: str
    expected: str


CATEGORIES = {
    "crash": "1. Crash during extraction / 2. crash during search",
    "disk": "3. Disk full, read-only output folder",
    "data": "4. Bad data",
    "model": "5. Bad model input",
    "untrusted": "6. Untrusted files",
    "cache": "7. Wrong cache",
    "concurrency": "8. Concurrency",
    "determinism": "9. Determinism",
    "storage": "10. Study storage and report outputs",
}

CASES: dict[str, Case] = {
    # 1-2 crashes ----------------------------------------------------------------------------
    "crash-extract-kill": Case(
        "crash",
        "SIGKILL an extraction at 33 points: each batch (17), each split allocation (4 shards, 4 "
        "in the merge), after the temp file opens, before close, before and after the rename (of "
        "the first shard and of the merged cache); every other case over an older cache",
        "output path absent, the older cache untouched, or (killed after the final rename) the "
        "complete new cache; the rerun resumes from the finished shards, leaves no .tmp/.lock/"
        ".shards, and is bit-identical to an uninterrupted run",
    ),
    "crash-extract-random-kill": Case(
        "crash",
        "SIGKILL an extraction from outside after a seeded random delay (6 seeds, half over an "
        "older cache), wherever it lands",
        "the same invariants: absent / older cache / complete new cache, never partial; the "
        "rerun is bit-identical to an uninterrupted run",
    ),
    "crash-extract-cli": Case(
        "crash",
        "SIGKILL `oodcache extract` mid-split, rerun the same command",
        "no cache.h5, a shard .tmp left by the kill; the rerun exits 0 with the uninterrupted "
        "cache and no shard folder or lock left",
    ),
    "crash-search-mid-trial": Case(
        "crash",
        "SIGKILL `oodcache search --trials 5` inside trial 2, rerun with `--until 5`",
        "trial 2 marked FAIL (its dead worker named), 5 complete trials, best file says 5",
    ),
    "crash-search-trial0": Case(
        "crash",
        "SIGKILL the search inside trial 0 (the official defaults), rerun with `--until 3`",
        "trial 0 FAIL, the defaults queued again and run as trial 1, 3 complete trials",
    ),
    "crash-search-live-worker": Case(
        "crash",
        "recover a study holding RUNNING trials of a live local worker and of another host",
        "both left RUNNING (only a provably dead local worker's trial is failed)",
    ),
    # 3 disk ---------------------------------------------------------------------------------
    "disk-readonly-folder": Case(
        "disk",
        "`oodcache extract` into a read-only tmpfs mount (root only)",
        "exit 2 before work: 'cannot write the cache to <folder>: Read-only file system'",
    ),
    "disk-too-little-space": Case(
        "disk",
        "extract with 200 kB free (estimate ~1.4 MiB)",
        "PreflightError 'not enough space for <out>: needs about N MiB, M MiB free' before the "
        "network runs; nothing written",
    ),
    "disk-too-little-space-cli": Case(
        "disk",
        "the same through the CLI",
        "exit 2, one-line message, no traceback, no file",
    ),
    "disk-estimate-covers-cache": Case(
        "disk",
        "compare the size estimate with a real cache",
        "estimate × margin + overhead ≥ actual size, and not wildly above it",
    ),
    "disk-full-mid-write": Case(
        "disk",
        "extract into a 400 kB tmpfs holding an older cache, free-space check bypassed",
        "'No space left on device' error; the temp file and lock removed; the older cache intact",
    ),
    "disk-readonly-search": Case(
        "disk",
        "`oodcache search` on a cache in a read-only folder (no room for studies/)",
        "exit 2 naming the studies folder and 'Read-only file system'; no traceback, nothing "
        "written",
    ),
    # 4 data ---------------------------------------------------------------------------------
    "data-truncated-image": Case(
        "data", "a PNG cut in half", "ImageListError 'id.txt:5: cannot read image …'; no file"
    ),
    "data-corrupt-image": Case(
        "data", "a PNG header followed by garbage", "ImageListError naming list and line; no file"
    ),
    "data-not-an-image": Case(
        "data", "a text file named .png in a list", "ImageListError naming list and line; no file"
    ),
    "data-skip-bad-recorded": Case(
        "data",
        "a garbage image and a missing file with skip_bad: true",
        "recovery: both skipped, the split's 'skipped' attribute = 2, lines listed in "
        "splits/<split>.skipped.txt",
    ),
    "data-empty-folder": Case(
        "data", "an OOD split from an empty folder", "\"split 'ood_val' has no images\"; no file"
    ),
    "data-non-images-in-folder": Case(
        "data",
        "an OOD folder holding only a .txt file",
        "non-image extensions ignored, so \"split 'ood_val' has no images\"",
    ),
    "data-missing-entry": Case(
        "data", "a list line whose file does not exist", "'id.txt:2: image file not found: …'"
    ),
    "data-malformed-line": Case(
        "data",
        "an ID line without a label, and with a non-integer label",
        "'id.txt:7: malformed line …'",
    ),
    "data-label-out-of-range": Case(
        "data", "ID labels 3 and -1 with 3 classes", "'id.txt:4: label 3 outside 0..2 …'"
    ),
    "data-duplicate-path": Case(
        "data",
        "the same image listed twice (as '1.png' and './1.png')",
        "'id.txt:7: duplicate image path '1.png' (already listed at id.txt:2)'",
    ),
    "data-zero-samples": Case(
        "data", "a list with only a comment", "\"split 'ood_val' has no images\"; no file"
    ),
    "data-missing-root": Case(
        "data",
        "--data pointing nowhere",
        "MissingFileError before any work, listing every missing list and folder",
    ),
    "data-image-modes": Case(
        "data",
        "grey, RGBA and 16-bit PNGs next to their 8-bit RGB equivalents",
        "recovery: converted to 8-bit RGB; logits equal to the equivalents' bit for bit",
    ),
    "data-cli-error": Case(
        "data",
        "`oodcache extract` on a list with a bad label",
        "exit 2, message with list and line, no traceback, no file",
    ),
    # 5 model --------------------------------------------------------------------------------
    "model-unknown-arch": Case(
        "model", "`--arch resnet5000`", "exit 2: \"unknown arch 'resnet5000'; available: […]\""
    ),
    "model-unknown-layer": Case(
        "model",
        "an arch YAML naming module 'layer33'",
        "KeyError \"no modules named ['layer33']; valid names: […]\" before the network runs",
    ),
    "model-weights-mismatch": Case(
        "model",
        "weights with a missing key, an unexpected key, a wrong shape",
        "WeightsError listing missing / unexpected keys / shape mismatches; no file",
    ),
    "model-nonfinite": Case(
        "model",
        "a NaN, then an Inf, in the head bias",
        "NonFiniteError \"split 'fit', rows 0..3: non-finite values in logits\"; the older "
        "cache untouched, no temp file",
    ),
    "model-nonfinite-later-split": Case(
        "model",
        "a NaN in one layer's activation, then gradient, of a later split's batch only",
        "NonFiniteError \"split 'ood_val', rows 4..7: non-finite values in layer layer2 "
        'gradient" (or activation); no file left',
    ),
    "model-class-count": Case(
        "model",
        "a 5-class arch on a 7-class benchmark",
        "ConfigError naming both class counts and the archs that fit",
    ),
    # 6 untrusted ----------------------------------------------------------------------------
    "untrusted-pickle-checkpoint": Case(
        "untrusted",
        "a checkpoint whose pickle would write a file when loaded",
        "WeightsError 'refusing to load … could run code'; the file is never written",
    ),
    "untrusted-yaml-tag": Case(
        "untrusted",
        "an arch YAML with a !!python/object/apply tag",
        "ConfigError 'not a valid plain YAML config'; nothing run",
    ),
    "untrusted-cache-attrs": Case(
        "untrusted",
        "cache attributes 'config'/'odin_grid'/'odin_form' set to Python code, a tuple literal, "
        "wrong shapes",
        "CacheError naming the attribute; nothing evaluated",
    ),
    "untrusted-best-params": Case(
        "untrusted",
        "best/<method>.json as a Python literal, with params not an object, of another method",
        "ValueError naming the file and the fix (rerun search)",
    ),
    "untrusted-best-unknown-param": Case(
        "untrusted",
        "replay parameters with an unknown key ('__class__')",
        "ValueError listing the method's parameters",
    ),
    "untrusted-list-path-escape": Case(
        "untrusted",
        "list paths '../x', '/etc/passwd', 'a/../../x', 'C:/x', '..\\x'",
        "ImageListError 'ood.txt:2: image path … leaves the data root' (lexical check; symlinks "
        "inside the data root are followed on purpose)",
    ),
    # 7 wrong cache --------------------------------------------------------------------------
    "cache-format-version": Case(
        "cache",
        "format_version removed, one newer, and 0",
        "CacheError: missing attribute / 'newer than this oodcache; upgrade' / invalid",
    ),
    "cache-incomplete": Case(
        "cache", "complete = False", "CacheError 'incomplete (extraction did not finish); rerun'"
    ),
    "cache-not-hdf5": Case(
        "cache", "a cache cut in half; a text file", "CacheError 'not a readable HDF5 file'"
    ),
    "cache-tmp-only": Case(
        "cache",
        "only cache.h5.tmp present",
        "CacheError pointing to the interrupted extraction",
    ),
    "cache-other-model-than-study": Case(
        "cache",
        "search a study after replacing its cache with one of other weights",
        "exit 2 'made on another cache (fingerprint …)'; the study keeps its trials",
    ),
    "cache-missing-arrays": Case(
        "cache",
        "search NAC on a cache without layers, ODIN on a cache extracted without ODIN",
        "exit 2 'needs per-layer arrays' / 'needs ODIN's perturbed-input scores … re-extract "
        "with --odin'; no study created",
    ),
    "cache-best-from-other-cache": Case(
        "cache",
        "`oodcache score --best-all` after the cache was re-extracted with other weights",
        "exit 2 'best/<method>.json was tuned on another cache (fingerprint …)'; no scores",
    ),
    # 8 concurrency --------------------------------------------------------------------------
    "concurrency-second-extract-refused": Case(
        "concurrency",
        "a second extract (in process and CLI) while the first is frozen mid-split",
        "CacheLockedError / exit 2 naming the first pid; its shard temp file untouched; the first "
        "resumes and writes the uninterrupted cache",
    ),
    "concurrency-postgres-workers": Case(
        "concurrency",
        "4 `oodcache search` workers × 4 trials on one PostgreSQL study (after trial 0)",
        "17 complete trials numbered 0..16",
    ),
    "concurrency-postgres-worker-killed": Case(
        "concurrency",
        "3 PostgreSQL workers × 4 trials, one SIGKILLed in its 2nd trial, then `--until 13`",
        "13 complete, 1 FAIL, none left RUNNING",
    ),
    "concurrency-journal-jobs": Case(
        "concurrency",
        "`--jobs 3 --trials 9` on the journal file",
        "9 complete trials, trial 0 the defaults",
    ),
    # 9 determinism --------------------------------------------------------------------------
    "determinism-cache": Case(
        "determinism",
        "extract the same config again, in process and through the CLI",
        "bit-identical to the reference (timestamps and speeds aside)",
    ),
    "determinism-study": Case(
        "determinism",
        "the same 8-trial seeded search on two copies of a cache",
        "identical trials, values and best-parameters record",
    ),
    # 10 study storage ------------------------------------------------------------------------
    "storage-journal-partial-line": Case(
        "storage",
        "a 3-trial search, then an unfinished last journal record appended (a write cut by a full "
        "disk), then `--until 5`",
        "the unfinished bytes moved to `react.journal.partial-1`, exit 0, 5 complete trials with "
        "the first 3 unchanged; every later read of the study works",
    ),
    "storage-foreign-file": Case(
        "storage",
        "`--storage` naming an existing text file and an existing binary file",
        "exit 2 naming the file and line (not an Optuna journal); both files byte-identical",
    ),
    "storage-direction-mismatch": Case(
        "storage",
        "a journal whose study `react` minimises, then `oodcache search --method react` (maximises "
        "AUROC) on it",
        "exit 2 naming both directions; no trial added, no best file",
    ),
    "storage-unknown-opcode": Case(
        "storage",
        "a journal with a record of unknown op code 99",
        "exit 2 naming the line, no traceback; the file unchanged",
    ),
    "storage-report-foreign-study": Case(
        "storage",
        "a best file whose `storage` names a SQLite file elsewhere, an unreachable PostgreSQL "
        "host, or a journal path outside the run folder, then `oodcache report`",
        "exit 0 without those studies' figures (a log line says how to include a database); no "
        "file created outside the run folder, no connection attempted",
    ),
    # 4 bad data: configs ------------------------------------------------------------------------
    "config-duplicate-key": Case(
        "data",
        "a benchmark YAML that repeats the key `id_val` (the second pointing at the test images)",
        "ConfigError / exit 2 naming the line and key, before any work; nothing written",
    ),
    "config-alias-bomb": Case(
        "data",
        "a 1 KB benchmark YAML of nested aliases (a 'billion laughs' expanding to 9⁹ items)",
        "ConfigError naming the alias, before expansion; memory stays flat",
    ),
    "config-names-as-paths": Case(
        "data",
        "split names `../../x/y` and `a/b`, a dataset `ph|<script>`, a benchmark `../digits`",
        "ConfigError / exit 2 naming the name and the allowed alphabet; no file outside the "
        "output folder, nothing written",
    ),
    "config-types": Case(
        "data",
        "a string seed, num_classes 0, a YAML null split, an unknown role",
        "ConfigError naming the key and the allowed values",
    ),
    "config-not-utf8": Case(
        "data",
        "a benchmark YAML with a byte that is not UTF-8",
        "ConfigError naming the file and the line",
    ),
    "config-arch-layer-name": Case(
        "data",
        "an arch YAML whose layer alias is `../l3`",
        "ConfigError naming the layer name",
    ),
    "cache-crafted-attributes": Case(
        "cache",
        "an otherwise valid cache whose `complete` attribute is the string 'False', or with a "
        "split renamed `x..y` or `a|b`",
        "CacheError / exit 2 naming the attribute or the name; no study, no best file",
    ),
    "params-wrong-type-or-domain": Case(
        "data",
        "`--params` and `oodcache.create` with a string percentile, percentile 130, k 2.7, k true, "
        "ODIN temperature 0, energy temperature -1, ASH variant Q, NAC M odd or O missing",
        "ParameterError / exit 2 naming the method, the parameter and its domain; no score file",
    ),
    "params-best-file-types": Case(
        "data",
        "a best file whose `value` is the string '0.9', or whose `params` is a list, then "
        "`oodcache score --best`",
        "exit 2 naming the file and the key; no score file (the string is never printed "
        "repeated as a number)",
    ),
    "params-not-an-object": Case(
        "data",
        "`--params` that is a JSON list, or not JSON",
        "exit 2 with a message, no traceback",
    ),
    "cache-nonfinite-or-bad-labels": Case(
        "cache",
        "a NaN in one layer's activations, an inf in the features, an ID label of 99 (5 "
        "classes), then `oodcache search --method nac`",
        "CacheError / exit 2 naming the split and the array; no best file (NAC used to report a "
        "val AUROC of 100.00)",
    ),
    "report-killed-mid-figures": Case(
        "storage",
        "SIGKILL `oodcache report` after its 3rd figure (over a complete earlier report), rerun",
        "report.md, report.html, results.csv, results.tex and figures/ byte-identical to the "
        "earlier report; the rerun completes and leaves no figures.partial/ or .tmp",
    ),
    "crash-search-ctrl-c": Case(
        "crash",
        "SIGINT (Ctrl-C) `oodcache search --trials 10` inside trial 3, then `--until 5`",
        "exit 130 with a message, no traceback; 3 complete trials and the interrupted one FAIL; "
        "best/react.json written from the 3; the rerun tops up to 5",
    ),
    "concurrency-lock-holder": Case(
        "concurrency",
        "a cache lock naming this host and a live pid whose start time differs (a reused pid), "
        "and one naming another host",
        "the reused-pid lock is stale and taken over (it used to refuse forever); the other "
        "host's lock is refused naming its holder and left in place (it used to be removed)",
    ),
    "list-hostile-files": Case(
        "data",
        "an image list that is a symlink to /dev/zero, a FIFO, or has a byte that is not UTF-8",
        "ImageListError at once naming the file (and the line), without reading the device",
    ),
    "folder-symlink-loop": Case(
        "data",
        "an OOD folder with a symlink back to itself and a second link to a sub-folder",
        "each image counted once",
    ),
    "cache-missing-gradient": Case(
        "cache",
        "one split's layer with its gradient dataset deleted, then `oodcache search --method nac`",
        "CacheError / exit 2 naming the split and layer, no traceback",
    ),
    "cache-edited-after-study": Case(
        "cache",
        "after a study, the OOD-val logits rows reordered in place (same values, same first "
        "rows), then `oodcache search` again",
        "loading the edited split is a CacheError / exit 2 naming it (its content hash no "
        "longer matches); with the hash attribute recomputed too, the fingerprint (over every "
        "dataset's hash) changes and the old study is refused as another cache's",
    ),
    "disk-too-little-space-before-training": Case(
        "disk",
        "`oodcache extract` of the digits benchmark with no trained model yet and 1000 bytes free",
        "exit 2 naming the space needed, before the model trains (no weights.pt written)",
    ),
    "cli-numbers-out-of-range": Case(
        "data",
        "`--trials -3`, `--jobs 0`, `--timeout nan`, `--batch-size 0`, `--bootstrap -5`, "
        "`demo --trials 0`",
        "argparse error (exit 2) naming the argument and its range; nothing started",
    ),
    "disk-full-cli": Case(
        "disk",
        "`oodcache extract` on tmpfs mounts of 60, 140, 260 and 360 KB (the disk fills in the "
        "1st, 2nd, 3rd and 4th shard), free-space check bypassed",
        "exit 2 with HDF5's 'No space left on device'; no cache, no .tmp, no lock (it used to end "
        "in a segmentation fault after the message)",
    ),
}
