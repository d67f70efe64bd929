"""The warehouse's result tables (scores, target lists and their audit), apart from the
contract tables that ingest loads.
"""
