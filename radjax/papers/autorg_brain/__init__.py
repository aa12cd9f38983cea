"""AutoRG-Brain: region-guided brain MRI report generation (spec vision.md §4).

So far the package holds only the paper's evaluation protocol (``metrics``); its model,
data format and demo come with its issue."""
