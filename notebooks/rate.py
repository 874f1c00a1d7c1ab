# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Rate explanations
#
# Open with Voilà: `…/voila/render/rate.ipynb?run=<run>&rater=<you>`; in JupyterLab set `study`/`rater` below. Every rating is saved the moment you give it.

# %%
from sdlib.study.rating_ui import app_from_request

study = None  # e.g. 'outputs/smoke/human_study' (default: ?study= / ?run= of the page)
rater = None  # e.g. 'rater1' (default: ?rater= of the page, else a chooser)
app_from_request(study=study, rater=rater)
