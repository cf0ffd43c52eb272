"""What the processes of one installation share: interfaces in ``base.py``, backends in ``memory.py`` and the
``redis*.py`` modules, the choice between them in ``make.py``. Empty on purpose: ``errors.py`` imports
``redis.py`` (its failures' wording) without pulling in the rest."""
