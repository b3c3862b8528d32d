"""``dopamine compare``: the five training modes side by side on one collection (the paper's Figure 1).

splits (virtual hospitals), collection (the images), modes (one run of one mode through the product's
code), run (the job: search, seeds, resume), report (figure and HTML).
"""
