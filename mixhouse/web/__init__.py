"""The faces of Mixhouse: the mix page (``/``), a mix's live page (``/mix/{id}``), the admin
dashboard (``/admin``) and the Prometheus metrics (``/metrics``), served by ``mixhouse serve``.

Pages are rendered on the server (Jinja2 templates in ``templates/``) with a little plain
JavaScript and CSS (``static/``), all package data: no build step and nothing loaded from
another site. :func:`mixhouse.web.mount.mount_web` adds them to the API's FastAPI app.
"""
