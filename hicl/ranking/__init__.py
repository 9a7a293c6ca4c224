"""Measuring which augmentation ops matter for a manifest's data (`hicl rank-augmentations`).

`leave_one_out` runs the pilots and ranks the ops, `probe` is the cheaper one-run ranking from the
invariance probe, `stats` holds the intervals, groups and Spearman's rho, `report` the table, JSON and
chart, `written` the manifest whose hierarchy follows the measured order.
"""
