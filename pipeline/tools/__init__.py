"""Entry points around the DAG: the Prefect flow, the experiment and seed comparison, and prediction on new
images.
"""
