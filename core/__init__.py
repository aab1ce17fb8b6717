"""TransferScope engine: datasets, backbones, cached features, classifiers, metrics and runs.

Pure Python (torch, timm, scikit-learn, plotly); never imports Streamlit.
"""
