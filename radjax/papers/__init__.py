"""One package a paper: ``radjax.papers.<paper>``.

A paper package holds everything that is that paper's own: its model composition (``model``:
build_model, loss_fn, predict_fn, evaluate, optional pretrained_params), its data format
(``data``: ensure_data, make_source, load_example, optional complete_config and batches), its
phantoms, text encoding, evaluation and checkpoint converter, an optional ``demo`` module
(``SECTIONS``: what ``experiments.demo`` trains and tables) and a README. Its launcher config
is ``configs/<paper>.py`` (``config.paper`` names the package). Shared code finds papers by
name through ``radjax.registry``; it never imports one.
"""
