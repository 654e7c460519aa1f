"""iclviz: see how a language model learns in context (Yu & Ananiadou, EMNLP 2024).

The library never imports streamlit; the app in ``app.py`` and ``pages/`` only draws
what these modules return.
"""

__version__ = "0.1.0"
