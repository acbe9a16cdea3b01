"""
What a training job needs from idetcd beyond names: an agreed world
(L{idetcd.training.rounds}) and the launchers' own interfaces.
"""
