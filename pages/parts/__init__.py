"""The pages' shared parts (session state, sidebar, cached runs, widgets). Streamlit never lists a module in a
subfolder of ``pages/`` as a page, so none of these has a URL of its own."""
