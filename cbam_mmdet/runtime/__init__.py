"""What cbam_mmdet needs around the models, none of it CBAM-specific.

Checkpoint reading (:mod:`.checkpoints`), torch's ``weights_only`` allow-list for mmengine's
checkpoints (:mod:`.weights_only`), atomic file writes (:mod:`.atomic_files`), dataset checks
(:mod:`.dataset_checks`), process ranks (:mod:`.ranks`), the C++ build cache
(:mod:`.cpp_library`), activation memory and complexity counting (:mod:`.memory`,
:mod:`.complexity`), the command-line plumbing of tools/train.py and tools/test.py
(:mod:`.cli`), the statistics and figures of multi-seed comparisons (:mod:`.sweep_stats`,
:mod:`.sweep_plots`), and what ``import cbam_mmdet`` does (:mod:`.import_effects`).
"""
