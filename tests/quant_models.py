"""Small models with the structures the quantizer must handle (conv-BN-ReLU, max-pool,
residual add, nearest upsampling, float prediction convs)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class TinyDetectorLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8))
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.lateral = nn.Conv2d(16, 8, 1)
        self.head = nn.Conv2d(8, 3, 1)
        self.box = nn.Conv2d(8, 4, 1)
        self.stride = 4

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = F.relu(self.block(x) + x)
        up = F.interpolate(self.lateral(self.down(x)), scale_factor=2, mode="nearest")
        x = x + up
        return self.head(x), F.relu(self.box(x)) * 4


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = TinyDetectorLike()
    for m in model.modules():  # non-trivial BN statistics so folding is tested for real
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()
