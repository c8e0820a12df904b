"""Pieces every layer of odeflow may import (models, data, runner, the sweeper): nothing here imports them."""
